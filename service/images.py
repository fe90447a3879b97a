"""Client images → model input, through the one image path of `learner.data.images`.

The service decodes and prepares images exactly as training did (`learner.data.images`: format
by content, pixel limit from the header, EXIF orientation, antialiased resize to the model's side);
this module only adds what is particular to HTTP: base64 payloads, and the status code of each
refusal (415 unsupported format, 413 too many pixels, 400 empty or corrupt).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Sequence

import numpy as np

from learner.data import images

STATUS = {"empty": 400, "unsupported": 415, "too_large": 413, "corrupt": 400}
"""HTTP status of each kind of refused image (`images.ImageError.kind`)."""


class ImageError(ValueError):
    """An image the service refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_base64(text: str, index: int) -> bytes:
    """Bytes of a base64 string or `data:image/...;base64,` URL."""
    if text.startswith("data:"):
        _, sep, text = text.partition(",")
        if not sep:
            raise ImageError(400, f"image {index}: a data URL needs a comma before its payload")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageError(400, f"image {index}: not valid base64 ({err})") from None


def model_input(
    data: Sequence[bytes], side: int, *, formats: Collection[str], max_pixels: int
) -> np.ndarray:
    """A request's images as the model takes them: float32 (N, 3, S, S), pixel values 0–255.

    Each image is decoded and resized on its own, so a request holds at most one full-size
    decoded image at a time.
    """
    try:
        pixels = [
            images.pixels(d, side, name=f"image {i}", formats=formats, max_pixels=max_pixels)
            for i, d in enumerate(data)
        ]
    except images.ImageError as err:
        limit = " (JANUS_MAX_PIXELS)" if err.kind == "too_large" else ""
        raise ImageError(STATUS[err.kind], f"{err}{limit}") from None
    return images.model_input(pixels)
