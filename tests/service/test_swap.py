"""Hot swap in one process: pointer moves are followed, torch serves a version without ONNX,
and a version that fails to load leaves the old one serving (visible in readiness)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from service.batching import Batcher
from service.metrics import service_metrics
from service.runtime import LoadedModel
from tests.service.conftest import ADMIN, make_api


def _copy(version_store: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(version_store, tmp_path / "store"))


def test_follows_pointer_and_torch_fallback(version_store: Path, tmp_path: Path) -> None:
    a = make_api(_copy(version_store, tmp_path))
    swapper = a.serving.swapper
    assert swapper.current is not None and swapper.current.version == "v0002"
    a.store.activate("v0003", actor="test")  # no model.onnx: torch
    swapper.check()
    assert swapper.current.version == "v0003"
    assert swapper.current.engine == "torch"
    a.store.rollback(actor="test")
    swapper.check()
    assert swapper.current.version == "v0002"
    assert swapper.readiness()["swaps"] == 3
    a.serving.stop()


def test_failed_load_keeps_old_version(version_store: Path, tmp_path: Path) -> None:
    root = _copy(version_store, tmp_path)
    a = make_api(root, retry_failed_s=60)
    a.store.activate("v0001", actor="test")
    (root / "versions" / "v0001" / "model.onnx").write_bytes(b"damaged")
    a.serving.swapper.check()
    ready = a.client.get("/readyz", headers={"Authorization": f"Bearer {ADMIN}"})
    assert ready.status_code == 200  # still serving the old version
    detail = ready.json()
    assert detail["version"] == "v0002"
    assert detail["failed_version"] == "v0001"
    assert "integrity" in detail["last_error"]
    from prometheus_client import REGISTRY

    failures = REGISTRY.get_sample_value("janus_swap_failures_total", {"version": "v0001"})
    assert failures is not None and failures >= 1
    a.serving.swapper.check()  # not retried before retry_failed_s
    assert a.serving.swapper.current.version == "v0002"  # type: ignore[union-attr]
    a.serving.stop()


def test_batcher_never_mixes_versions() -> None:
    import asyncio

    calls: list[tuple[str, int]] = []

    def model(version: str, shift: float) -> LoadedModel:
        def logits(x: np.ndarray) -> np.ndarray:
            calls.append((version, len(x)))
            return x.reshape(len(x), -1)[:, :2] + shift

        return LoadedModel(version, ("a", "b"), 2, (0, 0, 0), (1, 1, 1), "fake", logits)

    old, new = model("v1", 0.0), model("v2", 100.0)
    batcher = Batcher(service_metrics(), max_batch=64, wait_ms=20)

    async def run() -> list[np.ndarray]:
        jobs = [
            batcher.logits(old if i % 2 else new, np.full((1, 3, 2, 2), i, np.float32))
            for i in range(10)
        ]
        return await asyncio.gather(*jobs)

    outs = asyncio.run(run())
    batcher.close()
    for i, out in enumerate(outs):
        assert out[0, 0] == i + (0.0 if i % 2 else 100.0)
    assert sum(n for _, n in calls) == 10
    assert len(calls) < 10  # batched
