"""Hot swap in one process: pointer moves are followed, torch serves a version without ONNX,
a version that fails to load leaves the old one serving (visible in readiness), and a fresh
worker whose serving version does not load falls back to the previous one, with the bad version
quarantined (also when its loads kill their processes)."""

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


def _fallback_figure(a) -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("janus_serving_fallback", {"version": "v0002"})


def test_a_fresh_worker_falls_back_when_the_serving_version_does_not_load(
    version_store: Path, tmp_path: Path, digits
) -> None:
    from adapters_store import Quarantined

    root = _copy(version_store, tmp_path)
    model = root / "versions" / "v0002" / "model.onnx"
    good = model.read_bytes()
    model.write_bytes(b"damaged")  # the serving version, corrupt on disk
    a = make_api(root, retry_failed_s=0.01)  # a worker starting now
    detail = a.serving.swapper.readiness()
    assert detail["version"] == "v0001" and detail["fallback_for"] == "v0002"  # served before
    assert "integrity" in a.store.quarantined()["v0002"]
    assert _fallback_figure(a) == 1
    image = np.zeros((8, 8), np.uint8)
    from tests.service.conftest import png

    r = a.client.post("/classify", files=[("images", ("a.png", png(image)))])
    assert r.status_code == 200 and r.json()["version"] == "v0001"
    admin = {"Authorization": f"Bearer {ADMIN}"}
    listed = a.client.get("/admin/versions", headers=admin).json()
    assert [v["quarantined"] is not None for v in listed] == [False, True, False]
    model.write_bytes(good)  # repaired: still quarantined until served on purpose
    try:
        a.store.activate("v0002", actor="test")
        raise AssertionError("a quarantined version was activated without --force")
    except Quarantined as err:
        assert "--force" in str(err)
    r = a.client.post("/admin/versions/v0002/activate", headers=admin, json={"force": True})
    assert r.status_code == 200, r.text
    assert a.store.quarantined() == {}
    a.serving.swapper.check()
    detail = a.serving.swapper.readiness()
    assert detail["version"] == "v0002" and detail["fallback_for"] is None
    assert _fallback_figure(a) == 0
    a.serving.stop()


def test_a_version_whose_loads_end_their_process_is_quarantined_not_retried(
    version_store: Path, tmp_path: Path
) -> None:
    """Two processes began loading v0002 and died before they ended (as a load that kills its
    process would): a fresh worker quarantines it without loading it and falls back."""
    import subprocess
    import sys

    root = _copy(version_store, tmp_path)
    begin = (
        "import sys; from adapters_store import open_store; "
        "open_store(sys.argv[1]).begin_load('v0002')"  # then the process ends, load unfinished
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", begin, str(root)], check=True, timeout=60)
    a = make_api(root)
    assert a.serving.swapper.readiness()["version"] == "v0001"
    assert a.store.quarantined()["v0002"] == "its load ended 2 service worker processes"
    a.serving.stop()


def test_a_version_that_loads_forgets_the_deaths_recorded_against_it(
    version_store: Path, tmp_path: Path
) -> None:
    """One process died while loading v0002 (for any reason); the next load succeeds, so the
    record is dropped and cannot add up with a later, unrelated death."""
    import subprocess
    import sys

    root = _copy(version_store, tmp_path)
    begin = (
        "import sys; from adapters_store import open_store; "
        "open_store(sys.argv[1]).begin_load('v0002')"
    )
    subprocess.run([sys.executable, "-c", begin, str(root)], check=True, timeout=60)
    a = make_api(root)
    assert a.store.crashed_loads("v0002") == 0 and a.store.quarantined() == {}
    assert a.serving.swapper.readiness()["version"] == "v0002"
    a.serving.stop()


def test_a_version_this_process_cannot_run_is_not_quarantined(
    version_store: Path, tmp_path: Path
) -> None:
    """v0003 has no model.onnx: a worker held to ONNX Runtime (as a slim serving image is) cannot
    load it, but another worker may, so it stays out of quarantine."""
    a = make_api(_copy(version_store, tmp_path), engine="onnx")
    a.store.activate("v0003", actor="test")
    a.serving.swapper.check()
    ready = a.serving.swapper.readiness()
    assert ready["version"] == "v0002" and ready["failed_version"] == "v0003", ready
    assert "JANUS_ENGINE=onnx" in ready["last_error"]
    assert a.store.quarantined() == {}
    a.serving.stop()
