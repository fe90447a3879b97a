"""Client images → model inputs, refusing what a worker should not decode.

Checks, in order: the format (sniffed from the bytes, not a file name) is on the allowlist (415);
the declared size is under the pixel limit, read from the header before any pixel is decoded
(decompression bombs, 413); the image decodes (400, naming the problem). Accepted images become
RGB, are resized to the model's side and normalised with its mean and std.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
"""Leading bytes of formats PIL reads: a file that starts like one but does not open is corrupt."""


def sniff(data: bytes) -> str | None:
    """The format the leading bytes announce, if any."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in MAGIC.items() if data.startswith(magic)), None)


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


def open_image(data: bytes, index: int, *, formats: Sequence[str], max_pixels: int) -> Image.Image:
    """Decodes one image to RGB after checking its format and declared size."""
    if not data:
        raise ImageError(400, f"image {index}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=None)
    except UnidentifiedImageError:
        announced = sniff(data)
        if announced in formats:
            raise ImageError(
                400, f"image {index}: corrupt {announced} data (the header does not parse)"
            ) from None
        raise ImageError(
            415, f"image {index}: not a recognised image; send one of {', '.join(formats)}"
        ) from None
    except Image.DecompressionBombError as err:
        raise ImageError(413, f"image {index}: refused as a decompression bomb ({err})") from None
    if im.format not in formats:
        raise ImageError(
            415, f"image {index}: format {im.format} is not accepted; send {', '.join(formats)}"
        )
    w, h = im.size
    if w * h > max_pixels:
        raise ImageError(
            413,
            f"image {index}: {w}×{h} = {w * h} pixels is above the limit of {max_pixels} "
            "(JANUS_MAX_PIXELS); send a smaller image",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
        return im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageError(400, f"image {index}: corrupt {im.format} data ({err})") from None


def to_input(
    images: Sequence[Image.Image],
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> np.ndarray:
    """RGB images → float32 (B, 3, S, S), resized (bilinear) and normalised."""
    side = (size, size)
    arrays = [
        np.asarray(im if im.size == side else im.resize(side, Image.Resampling.BILINEAR))
        for im in images
    ]
    x = np.stack(arrays).astype(np.float32) / np.float32(255.0)  # (B, S, S, 3)
    scaled = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(scaled.transpose(0, 3, 1, 2), dtype=np.float32)  # (B, 3, S, S)
