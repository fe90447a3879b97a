"""Training and serving prepare an image the same way (`learner.data.images`, one path).

The same files (small, large, non-square, EXIF-rotated JPEG, palette, RGBA, 16-bit) go through
the learn job's read (`open_new_classes` at the model's side, streamed by `learner.loader`, then
`learner.inputs.prepare`, as training and evaluation take them) and through the service's
(`service.images.model_input`, what `/classify` calls); the model inputs are equal. Then
`/classify` on the published version (ONNX Runtime) answers what the torch model computes on the
training-path input.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adapters_store import open_store
from learner.data.images import IMAGE_FORMATS
from learner.inputs import prepare
from learner.jobs.intake import open_new_classes
from learner.jobs.versioning import load_state
from learner.loader import PixelDataset
from learner.state import build_model
from service.images import model_input
from tests.service.conftest import make_api

SIDE = 32  # the tiny test convnet's input side (tests/conftest.py)
ORIENTATION = 0x0112


def _texture(w: int, h: int, seed: int, channels: int = 3) -> np.ndarray:
    """Fine texture on a gradient: what a non-antialiased or differently sampled resize changes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 60 * np.sin(xx / 2.3) * np.cos(yy / 3.1) + 40 * (xx / w - yy / h)
    noise = rng.normal(0, 25, (h, w, channels))
    return np.clip(base[..., None] + noise, 0, 255).astype(np.uint8).squeeze()


def _encode(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def cases() -> dict[str, bytes]:
    """File name → encoded bytes; names sort in the order the loader reads them."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored sideways: turn 90° clockwise to view
    sixteen = (_texture(40, 30, 6, channels=1).astype(np.uint16) << 8) | 0x7F
    return {
        "a_small_gray.png": _encode(Image.fromarray(_texture(8, 8, 1, channels=1)), "PNG"),
        "b_large.jpg": _encode(Image.fromarray(_texture(900, 700, 2)), "JPEG", quality=92),
        "c_wide.png": _encode(Image.fromarray(_texture(300, 90, 3)), "PNG"),
        "d_exif_rotated.jpg": _encode(Image.fromarray(_texture(240, 120, 4)), "JPEG", exif=exif),
        "e_palette.gif": _encode(Image.fromarray(_texture(64, 48, 5)).quantize(32), "GIF"),
        "f_rgba.png": _encode(Image.fromarray(_texture(50, 70, 7)).convert("RGBA"), "PNG"),
        "g_sixteen_bit.png": _encode(Image.fromarray(sixteen), "PNG"),
    }


def _training_input(tmp_path: Path) -> tuple[list[str], np.ndarray]:
    folder = tmp_path / "batch" / "cases"
    folder.mkdir(parents=True)
    for name, data in cases().items():
        (folder / name).write_bytes(data)
    with open_new_classes(
        tmp_path / "batch", (), image_size=SIDE, min_per_class=1, max_bytes=1 << 30
    ) as batch:  # the files stream, as a learn job reads them
        images, _ = PixelDataset(batch, SIDE).__getitems__(range(len(batch)))
    x = prepare(images, SIDE)  # (N, 3, S, S), as train/evaluate use it
    return sorted(cases()), x.numpy()


def test_training_and_serving_compute_the_same_model_input(tmp_path: Path) -> None:
    names, trained = _training_input(tmp_path)
    served = model_input(
        [cases()[n] for n in names], SIDE, formats=IMAGE_FORMATS, max_pixels=40_000_000
    )
    assert served.shape == trained.shape == (len(names), 3, SIDE, SIDE)
    np.testing.assert_allclose(served, trained, rtol=0, atol=1e-5)
    # the cases are not trivial: the EXIF tag matters, and the large image is not a flat colour
    rotated = names.index("d_exif_rotated.jpg")
    plain = model_input(
        [_encode(Image.fromarray(_texture(240, 120, 4)), "JPEG")],
        SIDE,
        formats=IMAGE_FORMATS,
        max_pixels=40_000_000,
    )
    assert np.abs(plain[0] - served[rotated]).mean() > 5
    assert served[names.index("b_large.jpg")].std() > 5


def test_classify_answers_what_the_model_computes_on_the_training_input(
    tmp_path: Path, version_store: Path
) -> None:
    names, trained = _training_input(tmp_path)
    api = make_api(version_store, max_pixels=10_000_000, max_body_bytes=8 << 20)
    try:
        files = [("images", (n, cases()[n], "application/octet-stream")) for n in names]
        r = api.client.post("/classify", files=files, params={"top_k": 4})
        assert r.status_code == 200, r.text
        body = r.json()
        state = load_state(open_store(version_store), body["version"])
        with torch.no_grad():
            logits = build_model(state)(torch.from_numpy(trained))
        expected = torch.softmax(logits, dim=1).numpy()  # (N, C)
        index = {c: i for i, c in enumerate(state.class_names)}
        for row, result in zip(expected, body["results"], strict=True):
            for p in result["predictions"]:
                assert p["score"] == pytest.approx(float(row[index[p["label"]]]), abs=1e-4)
    finally:
        api.serving.stop()
