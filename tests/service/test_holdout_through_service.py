"""The learn job's held-out accuracy is what the running service answers on the same images.

A real stack (embedded Redis, a `janus worker`, `bentoml serve`) learns six digit classes from
files of every kind the image path meets (PNG and JPEG, small and large, non-square, stored
sideways with an EXIF orientation tag). The held-out images are the ones the job set aside
(`holdout_mask` over the files in the order the loader reads them); classified one request at a
time through HTTP, they score what the job reported.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from learner.data import LabeledBatch, holdout_mask, list_images
from learner.jobs.client import LearnRequest, submit, wait
from learner.jobs.redis_embedded import EmbeddedRedis
from tests.conftest import TINY_BACKBONES
from tests.jobs.conftest import JobEnv, make_job_env, start_worker
from tests.service.conftest import ADMIN
from tests.service.stack import Server, start_server

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(330)]

CLASSES = ["digit1", "digit3", "digit5", "digit7", "digit8", "digit9"]
HOLDOUT = 0.2
SEED = 0


def _file(image: np.ndarray, i: int) -> tuple[str, bytes]:
    """One digit (8×8 grey) as a file of the i-th kind: sizes, shapes, formats and EXIF vary."""
    side = (16, 40, 120, 260)[i % 4]
    im = Image.fromarray(image).resize((side, side * (1 + i % 3) // 2), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    kind = i % 3
    if kind == 0:
        im.save(buf, format="PNG")
        return f"{i:03d}.png", buf.getvalue()
    if kind == 1:
        im.convert("RGB").save(buf, format="JPEG", quality=90)
        return f"{i:03d}.jpg", buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 8  # stored turned 90° clockwise: view by turning it back
    im.transpose(Image.Transpose.ROTATE_270).save(buf, format="JPEG", quality=90, exif=exif)
    return f"{i:03d}.jpg", buf.getvalue()


def _dataset(root: Path, digits: LabeledBatch, per_class: int = 30) -> Path:
    folder = root / "mixed"
    for name in CLASSES:
        (folder / name).mkdir(parents=True)
        index = np.flatnonzero(digits.labels == digits.class_names.index(name))[:per_class]
        for i, j in enumerate(index):
            file, data = _file(digits.images[j, ..., 0], i)
            (folder / name / file).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis
) -> Iterator[tuple[JobEnv, Server]]:
    root = tmp_path_factory.mktemp("holdout-stack")
    jobs = make_job_env(root, redis_server.url, "janus-holdout-test")
    worker = start_worker(jobs.env, root / "worker.log")
    server = start_server(
        {**jobs.env, "JANUS_MAX_BODY_BYTES": str(8 << 20)}, root / "bentoml.log", ADMIN, workers=1
    )
    try:
        worker.wait_ready(jobs.app, timeout=120)
        server.wait_live()
        yield jobs, server
    finally:
        server.stop()
        worker.stop()
        jobs.app.close()


def test_holdout_accuracy_equals_classifying_the_holdout_through_the_service(
    stack: tuple[JobEnv, Server], digits: LabeledBatch
) -> None:
    jobs, server = stack
    folder = _dataset(jobs.datasets, digits)
    request = LearnRequest(
        dataset=str(folder),
        parent="root",
        backbone=TINY_BACKBONES["convnet"],
        train={"epochs": 1, "num_threads": 1, "design_samples": 64, "seed": SEED},
        holdout_fraction=HOLDOUT,
    )
    job = wait(jobs.app, submit(jobs.app, request), timeout=240, poll_s=0.5)
    assert job.state == "succeeded", job.error
    assert job.result is not None
    reported = job.result["metrics"]["holdout_accuracy_new"]
    assert job.result["metrics"]["onnx_max_rel_diff"] <= 1e-4
    server.wait_all_serving(str(job.version))

    listing = list_images(folder)
    held = holdout_mask(listing.labels, listing.class_names, HOLDOUT, SEED)
    assert held.sum() == job.result["metrics"]["holdout_samples"] == 36
    files = [
        ("images", (p.name, p.read_bytes(), "application/octet-stream"))
        for p in np.asarray(listing.files, dtype=object)[held]
    ]
    r = server.post("/classify", files=files, params={"top_k": 1})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == job.version
    predicted = [res["predictions"][0]["label"] for res in r.json()["results"]]
    truth = [listing.class_names[y] for y in listing.labels[held]]
    served = 100.0 * np.mean([p == t for p, t in zip(predicted, truth, strict=True)])
    print(f"held-out accuracy: job {reported:.2f}, service {served:.2f}")
    assert abs(served - reported) <= 0.5, (served, reported)
    assert set(predicted) == set(CLASSES)  # a model that tells the classes apart
