"""The one image path (`learner.data.images`): what it decodes, how it turns and resizes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from learner.data import images
from learner.data.images import ImageError

ORIENTATION = 0x0112


def _encode(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB image with some texture (JPEG keeps it well)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
    return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


def test_exif_orientation_turns_the_image_upright() -> None:
    """A JPEG stored sideways with orientation 6 (rotate 90° clockwise to view) decodes to the
    upright image: the same pixels as the upright JPEG, within JPEG's loss."""
    upright = _photo(120, 200)  # (H 200, W 120): portrait as viewed
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # landscape on disk
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    tagged = _encode(stored, "JPEG", quality=95, exif=exif)
    plain = _encode(Image.fromarray(upright), "JPEG", quality=95)

    decoded = images.decode(images.open_image(tagged, name="t"), "t")
    assert decoded.size == (120, 200) and decoded.mode == "RGB"
    got = images.pixels(tagged, 48, name="tagged").astype(int)
    want = images.pixels(plain, 48, name="plain").astype(int)
    assert np.abs(got - want).mean() < 3
    ignored = np.asarray(stored.resize((48, 48), Image.Resampling.BILINEAR), dtype=int)
    assert np.abs(ignored - want).mean() > 20  # without the tag the picture is sideways


def test_shrinking_is_antialiased() -> None:
    """One-pixel stripes shrunk 8× average to grey; point sampling would keep black or white."""
    stripes = np.zeros((256, 256), np.uint8)
    stripes[:, ::2] = 255
    out = images.pixels(_encode(Image.fromarray(stripes), "PNG"), 32, name="stripes")
    assert out.shape == (32, 32, 1)
    assert abs(float(out.mean()) - 127.5) < 3 and float(out.std()) < 3


def test_format_is_read_from_the_content_and_checked_against_the_allowlist() -> None:
    png = _encode(Image.fromarray(_photo(20, 10)), "PNG")
    assert images.pixels(png, 8, name="x.jpg").shape == (8, 8, 3)  # the name does not matter
    with pytest.raises(ImageError, match="format PNG is not accepted") as err:
        images.pixels(png, 8, name="x", formats=("JPEG",))
    assert err.value.kind == "unsupported"
    with pytest.raises(ImageError, match="not a recognised image") as err:
        images.pixels(b"hello, not an image", 8, name="x")
    assert err.value.kind == "unsupported"
    with pytest.raises(ImageError, match="corrupt PNG") as err:
        images.pixels(png[:40], 8, name="x")
    assert err.value.kind == "corrupt"
    with pytest.raises(ImageError, match="empty") as err:
        images.pixels(b"", 8, name="x")
    assert err.value.kind == "empty"


def test_pixel_limit_is_checked_before_decoding() -> None:
    big = _encode(Image.new("L", (300, 200)), "PNG")
    with pytest.raises(ImageError, match="300×200 = 60000 pixels is above the limit of 59999"):
        images.pixels(big, 8, name="x", max_pixels=59_999)
    assert images.pixels(big, 8, name="x", max_pixels=60_000).shape == (8, 8, 1)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("L", "L"), ("1", "L"), ("LA", "L"), ("P", "RGB"), ("RGBA", "RGB"), ("I;16", "L")],
)
def test_modes_become_grayscale_or_rgb(mode: str, expected: str) -> None:
    if mode == "I;16":
        arr = np.full((6, 6), 0x8A00, np.uint16)
        im = Image.fromarray(arr)
    else:
        im = Image.new(mode, (6, 6))
    decoded = images.decode(images.open_image(_encode(im, "PNG"), name="x"), "x")
    assert decoded.mode == expected
    if mode == "I;16":
        assert np.asarray(decoded).max() == 0x8A  # the top 8 bits


def test_large_jpeg_decoded_at_a_reduced_scale_matches_a_full_decode() -> None:
    """JPEGs are decoded at the smallest DCT scale still ≥ the side: far less memory, and the
    model input stays within a few levels of decoding everything then resizing."""
    data = _encode(Image.fromarray(_photo(1600, 1200, seed=1)), "JPEG", quality=90)
    opened = images.open_image(data, name="x", side=64)
    assert opened.size == (200, 150)  # 1/8 scale: still ≥ 64 on both sides
    fast = images.pixels(data, 64, name="x").astype(int)
    full = Image.open(io.BytesIO(data)).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    assert np.abs(fast - np.asarray(full, dtype=int)).mean() < 2


def test_model_input_is_pixels_channels_first_grey_repeated() -> None:
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    rgb = np.stack([gray[..., 0], gray[..., 0] + 1, gray[..., 0] + 2], axis=-1)
    x = images.model_input([gray, rgb])
    assert x.shape == (2, 3, 4, 4) and x.dtype == np.float32
    assert np.array_equal(x[0, 0], x[0, 2]) and np.array_equal(x[0, 0], gray[..., 0])
    assert np.array_equal(x[1, 1], rgb[..., 1])  # values 0–255: the model normalises
    with pytest.raises(ValueError, match="uint8"):
        images.model_input(np.zeros((1, 4, 4, 3), np.float32))
