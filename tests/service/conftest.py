"""Service fixtures: a store with two small real versions, and an in-process API around it.

Versions are learned on scikit-learn's digits with the tiny convnet (one epoch), exported to ONNX
and published like the learn job does; v0003 has no ONNX file (the torch fallback).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from adapters_store import VersionStore, open_store
from learner.config import LoRAConfig, TrainConfig
from learner.data import LabeledBatch
from learner.jobs.settings import JobSettings
from learner.jobs.versioning import publish_state
from learner.methods import get_method
from learner.onnx_export import export_onnx
from learner.state import LearnerState
from learner.train import learn_task
from service.api import create_api
from service.config import ServiceSettings
from service.core import Serving
from service.metrics import service_metrics
from service.middleware import Guard
from tests.conftest import TINY_BACKBONES
from tests.jobs.conftest import redis_server  # noqa: F401 (the real Redis of the job tests)

ADMIN = "admin-token-0123456789"


def png(image: np.ndarray) -> bytes:
    """PNG bytes of a (H, W) or (H, W, 3) uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def version_store(tmp_path_factory: pytest.TempPathFactory, digits: LabeledBatch) -> Path:
    """A store with v0001 (digit0/1), v0002 (+digit2/3, serving) and v0003 (+digit4, no ONNX)."""
    root = tmp_path_factory.mktemp("service-store") / "store"
    store = open_store(root)
    cfg = TrainConfig(method=get_method("janus"), epochs=1, num_threads=1, design_samples=64)
    state = LearnerState(TINY_BACKBONES["convnet"], LoRAConfig(rank=4))
    parent = None
    for i, (names, onnx) in enumerate(
        [(["digit0", "digit1"], True), (["digit2", "digit3"], True), (["digit4"], False)]
    ):
        result = learn_task(state, digits.select_classes(names), cfg)
        data = export_onnx(result.model, result.state.class_names) if onnx else None
        m = publish_state(
            store,
            result.state,
            cfg,
            parent=parent,
            data_digest=f"sha256:{i}",
            metrics=result.metrics,
            onnx=data,
            activate=i < 2,
        )
        state, parent = result.state, m.id
    return root


@dataclass
class Api:
    client: TestClient
    serving: Serving
    store: VersionStore


def make_api(store_root: Path, redis_url: str | None = None, **settings: object) -> Api:
    cfg = ServiceSettings.from_env(
        {}, admin_token=ADMIN, poll_s=0.2, workers=1, threads=1, **settings
    )
    jobs = JobSettings.from_env(
        {}, store=str(store_root), data_dir=store_root.parent / "data", redis_url=redis_url
    )
    serving = Serving(cfg, jobs, service_metrics())
    serving.swapper.check()
    app = create_api(lambda: serving)
    wrapped = Guard(app, cfg.body_limit, serving.swapper.readiness, cfg.admin_tokens)
    return Api(TestClient(wrapped), serving, open_store(store_root, clean=False))


@pytest.fixture()
def api(version_store: Path) -> Iterator[Api]:
    a = make_api(version_store, max_body_bytes=200_000, max_pixels=100_000)
    with a.client:
        yield a
    a.serving.stop()
