"""One way from image bytes to model pixels, for training, evaluation and serving.

Every image the system sees takes the same path, whoever reads it (`learner.data.load_batch` for
a learn job's batch and its held-out images, `service` for `/classify`):

1. **open** (`open_image`): the format is read from the content, never the file name, and must be
   on an allowlist; the size declared in the header must be under a pixel limit before any pixel is
   decoded (decompression bombs); JPEGs are decoded at the smallest DCT scale that still covers the
   model's side (`Image.draft`).
2. **decode** (`decode`): pixels are decoded, turned upright from the EXIF orientation tag, and
   converted to 8-bit grayscale ("L") or RGB (16-bit and float grayscale are scaled to 8 bits).
3. **resize** (`resize`): to the model's square side with PIL's bilinear filter, which
   antialiases when it shrinks (its support widens with the scale); the aspect ratio is not kept.
4. **model input** (`model_input`): uint8 (N, S, S, C) pixels become float32 (N, 3, S, S) with
   values 0–255, grayscale repeated over three channels. Normalisation by the backbone's mean and
   std is the model's first operation (`learner.state.ContinualModel`), so it is inside the
   exported ONNX graph and cannot differ between training and serving.

Only numpy and PIL: the serving process imports this module without torch.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
"""Formats accepted by default (PIL names), for classify requests and datasets alike."""

MODEL_INPUT = "rgb-0-255"
"""The ONNX metadata `janus.input` of step 4's convention: RGB pixel values 0–255, the graph
normalises them itself."""

MAX_PIXELS = 40_000_000
"""Largest width × height accepted by default; below PIL's own bomb warning (≈ 89 M)."""

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

Refusal = Literal["empty", "unsupported", "too_large", "corrupt"]


class ImageError(ValueError):
    """An image that is refused; `kind` says why (the service maps it to an HTTP status)."""

    def __init__(self, kind: Refusal, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def sniff(data: bytes) -> str | None:
    """The format the leading bytes announce, if any."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in MAGIC.items() if data.startswith(magic)), None)


def open_image(
    source: bytes | str | os.PathLike[str],
    *,
    name: str,
    side: int | None = None,
    formats: Collection[str] = IMAGE_FORMATS,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Opens an image lazily after checking its format and declared size (step 1).

    Args:
        source: the encoded bytes, or a file path.
        name: how errors name the image ("image 3", a file path).
        side: the model's side; a JPEG is then decoded at the smallest scale still ≥ side.
        formats: accepted PIL format names.
        max_pixels: refuse images whose header declares more pixels than this.

    Raises:
        ImageError: empty, unsupported format, too many pixels, or a header that does not parse.
    """
    fh = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    allowed = ", ".join(formats)
    try:
        with warnings.catch_warnings():  # our own pixel limit applies below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fh, formats=None)
    except UnidentifiedImageError:
        head = source[:16] if isinstance(source, bytes) else _head(Path(source))
        if not head:
            raise ImageError("empty", f"{name}: empty file") from None
        announced = sniff(head)
        if announced in formats:
            raise ImageError(
                "corrupt", f"{name}: corrupt {announced} data (the header does not parse)"
            ) from None
        raise ImageError(
            "unsupported", f"{name}: not a recognised image; use one of {allowed}"
        ) from None
    except Image.DecompressionBombError as err:
        raise ImageError("too_large", f"{name}: refused as a decompression bomb ({err})") from None
    except OSError as err:
        raise ImageError("corrupt", f"{name}: cannot read ({err})") from None
    if im.format not in formats:
        im.close()
        raise ImageError(
            "unsupported", f"{name}: format {im.format} is not accepted; use {allowed}"
        )
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise ImageError(
            "too_large",
            f"{name}: {w}×{h} = {w * h} pixels is above the limit of {max_pixels}; "
            "shrink the image",
        )
    if side is not None and im.format == "JPEG":
        im.draft(im.mode, (side, side))  # DCT scaling: never below side, far less memory
    return im


def _head(path: Path) -> bytes:
    """The first bytes of a file PIL could not identify (to tell corrupt from unsupported)."""
    with open(path, "rb") as raw:
        return raw.read(16)


def to_image(pixels: np.ndarray) -> Image.Image:
    """uint8 (H, W, 1 or 3) pixels as a PIL image ("L" or "RGB")."""
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def decode(im: Image.Image, name: str) -> Image.Image:
    """Decodes an opened image, upright (EXIF orientation), as mode "L" or "RGB" (step 2)."""
    with im:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im.load()
                upright = ImageOps.exif_transpose(im)  # a copy, upright
            return _l_or_rgb(upright)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise ImageError("corrupt", f"{name}: corrupt {im.format} data ({err})") from None


def _l_or_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode in ("L", "1", "LA"):
        return im.convert("L")
    if mode.startswith("I;16"):
        arr = np.asarray(im, dtype=np.uint16) >> 8  # 16-bit grayscale → its top 8 bits
        return Image.fromarray(arr.astype(np.uint8))
    if mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if arr.size and arr.max() > 255:
            arr = arr * (255.0 / arr.max())
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return im.convert("RGB")


def resize(im: Image.Image, size: int | tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, C) pixels of an "L" (C = 1) or "RGB" (C = 3) image (step 3).

    Args:
        size: the model's side S (→ S × S), or (width, height).
    """
    wh = (size, size) if isinstance(size, int) else size
    if im.size != wh:
        im = im.resize(wh, Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def pixels(
    source: bytes | str | os.PathLike[str],
    side: int,
    *,
    name: str,
    formats: Collection[str] = IMAGE_FORMATS,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Steps 1–3: encoded bytes or a file → uint8 (side, side, C) pixels, C = 1 or 3."""
    im = open_image(source, name=name, side=side, formats=formats, max_pixels=max_pixels)
    return resize(decode(im, name), side)


def array_pixels(image: np.ndarray, side: int) -> np.ndarray:
    """Step 3 for an image already decoded to uint8 (H, W, C): the same resize, as (S, S, C)."""
    if image.shape[:2] == (side, side):
        return image
    return resize(to_image(image), side)


def model_input(images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Step 4: uint8 (S, S, C) pixels, C = 1 or 3 (mixed is fine), → float32 (N, 3, S, S), values
    0–255 (the ONNX input); grayscale is repeated over the three channels."""
    rgb = []
    for x in images:
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[-1] not in (1, 3):
            raise ValueError(
                f"expected uint8 (S, S, C) pixels, C = 1 or 3; got {x.shape} {x.dtype}"
            )
        rgb.append(x if x.shape[-1] == 3 else np.repeat(x, 3, axis=-1))
    batch = np.stack(rgb).transpose(0, 3, 1, 2)  # (N, 3, S, S)
    return np.ascontiguousarray(batch, dtype=np.float32)
