"""Client images → model input, through the one image path of `learner.data.images`.

The service decodes and prepares images exactly as training did (`learner.data.images`: format
by content, pixel limit from the header, EXIF orientation, antialiased resize to the model's side);
this module only adds what is particular to HTTP: base64 payloads, a request's decode budget
(pixels and frames, from the headers, before anything is decoded), and the status code of each
refusal (415 unsupported format, 413 too many pixels or frames, 400 empty or corrupt).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

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


@dataclass
class OpenedImages:
    """A request's images with their headers read and checked, nothing decoded yet."""

    images: list[Image.Image]
    pixels: int  # to decode, after JPEG's DCT scaling

    def close(self) -> None:
        for im in self.images:
            im.close()


def open_images(
    data: Sequence[bytes],
    side: int,
    *,
    formats: Collection[str],
    max_pixels: int,
    max_request_pixels: int | None = None,
    max_frames: int | None = None,
) -> OpenedImages:
    """Reads every image's header: format, its own pixel limit, the frames it declares and the
    request's total of pixels to decode (the decode budget), before any image is decoded.

    Raises:
        ImageError: the first image refused, or the budget exceeded (413).
    """
    opened = OpenedImages([], 0)
    try:
        for i, d in enumerate(data):
            im = images.open_image(
                d, name=f"image {i}", side=side, formats=formats, max_pixels=max_pixels
            )
            opened.images.append(im)
            frames = int(getattr(im, "n_frames", 1))
            if max_frames is not None and frames > max_frames:
                raise ImageError(
                    413,
                    f"image {i}: {frames} frames, above the limit of {max_frames} "
                    "(JANUS_MAX_FRAMES); send a still image",
                )
            opened.pixels += im.size[0] * im.size[1]
            if max_request_pixels is not None and opened.pixels > max_request_pixels:
                raise ImageError(
                    413,
                    f"images 0–{i} hold {opened.pixels} pixels, above the request's decode "
                    f"budget of {max_request_pixels} (JANUS_MAX_REQUEST_PIXELS); send fewer or "
                    "smaller images per request",
                )
    except images.ImageError as err:
        opened.close()
        raise _refusal(err) from None
    except ImageError:
        opened.close()
        raise
    return opened


def decode_images(opened: OpenedImages, side: int) -> np.ndarray:
    """Opened images as the model takes them: float32 (N, 3, S, S), pixel values 0–255. Each is
    decoded and resized on its own, so at most one full-size decoded image is held at a time (and
    only the first frame of an animation). Closes the images."""
    try:
        pixels = [
            images.resize(images.decode(im, f"image {i}"), side)
            for i, im in enumerate(opened.images)
        ]
    except images.ImageError as err:
        raise _refusal(err) from None
    finally:
        opened.close()
    return images.model_input(pixels)


def model_input(
    data: Sequence[bytes], side: int, *, formats: Collection[str], max_pixels: int, **limits: int
) -> np.ndarray:
    """`open_images` then `decode_images`: a request's images as the model takes them."""
    opened = open_images(data, side, formats=formats, max_pixels=max_pixels, **limits)
    return decode_images(opened, side)


def _refusal(err: images.ImageError) -> ImageError:
    limit = " (JANUS_MAX_PIXELS)" if err.kind == "too_large" else ""
    return ImageError(STATUS[err.kind], f"{err}{limit}")
