"""Crash safety and concurrency with real processes, on local disk and on the S3 server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from store_helpers import publish, raw_fs

from adapters_store import open_store, verify_store
from adapters_store._crash import CRASH_POINTS, ENV

pytestmark = pytest.mark.integration
WORKER = Path(__file__).with_name("store_worker.py")


def _worker(uri: str, *args: str, crash_at: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(WORKER.parents[2])}
    env.pop(ENV, None)
    if crash_at:
        env[ENV] = crash_at
    return subprocess.Popen(
        [sys.executable, str(WORKER), uri, *args], env=env, stdout=subprocess.PIPE, text=True
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out


def _together(uri: str, tmp_path: Path, *worker_args: list[str]) -> list[tuple[int, str]]:
    """Starts workers, waits until all are ready, then releases them at once."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [_worker(uri, *args, "--barrier", str(barrier)) for args in worker_args]
    deadline = time.monotonic() + 60
    while len(list(barrier.glob("ready-*"))) < len(procs) and time.monotonic() < deadline:
        time.sleep(0.01)
    (barrier / "go").touch()
    return [_finish(proc) for proc in procs]


def _leftovers(uri: str) -> list[str]:
    """Staged files, partial version folders and temporary files: what a crash leaves."""
    fs, root = raw_fs(uri)
    fs.invalidate_cache()
    found = []
    for path in fs.find(root):
        rel = path[len(root) + 1 :]
        parts = rel.split("/")
        staged = parts[0] == "staging" or parts[-1].startswith(".tmp-")
        partial = parts[0] == "versions" and not fs.exists(
            f"{root}/{parts[0]}/{parts[1]}/manifest.json"
        )
        if staged or partial:
            found.append(rel)
    return found


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_at_each_point_leaves_only_complete_verified_versions(
    shared_store_uri: str, point: str
) -> None:
    uri = shared_store_uri
    base = publish(open_store(uri), activate=True)

    code, _ = _finish(
        _worker(uri, "--key", "job-crash", "--activate", "--seed", "5", crash_at=point)
    )
    assert code == -signal.SIGKILL
    if point == "after_tensors":
        assert _leftovers(uri), "the crash left partial files behind"

    store = open_store(uri)  # opening cleans what the dead publisher left
    assert _leftovers(uri) == []
    report = verify_store(store)
    assert report.ok, report.problems
    assert report.checked == store.version_ids()
    assert store.version_ids()[0] == base.id and len(store.version_ids()) <= 2
    assert store.serving() == base.id  # the pointer never moved to an unfinished version
    store.verify_version(store.serving() or "")
    if point == "before_pointer":  # the audit entry was written ahead of the pointer
        assert "interrupted" in str(report.warnings)

    retried = publish(store, seed=5, idempotency_key="job-crash", activate=True)  # job retries
    assert store.find_by_key("job-crash") == retried
    assert store.version_ids()[-1] == retried.id and store.serving() == retried.id
    assert verify_store(store).ok


def test_two_processes_publishing_at_once_get_distinct_complete_versions(
    shared_store_uri: str, tmp_path: Path
) -> None:
    open_store(shared_store_uri)
    results = _together(shared_store_uri, tmp_path, ["--seed", "1"], ["--seed", "2"])

    assert [code for code, _ in results] == [0, 0]
    ids = sorted(json.loads(out)["id"] for _, out in results)
    assert ids == ["v0001", "v0002"]
    store = open_store(shared_store_uri)
    assert store.version_ids() == ids
    assert verify_store(store).ok


def test_one_key_published_by_two_processes_at_once_gives_one_version(
    shared_store_uri: str, tmp_path: Path
) -> None:
    open_store(shared_store_uri)
    args = ["--key", "same-job", "--activate"]
    results = _together(shared_store_uri, tmp_path, [*args, "--seed", "1"], [*args, "--seed", "2"])

    assert [code for code, _ in results] == [0, 0]
    assert {json.loads(out)["id"] for _, out in results} == {"v0001"}
    store = open_store(shared_store_uri)
    assert store.version_ids() == ["v0001"] and verify_store(store).ok
    assert store.serving() == "v0001" and len(store.history()) == 1


def test_opening_does_not_disturb_a_live_publisher(shared_store_uri: str, tmp_path: Path) -> None:
    store = open_store(shared_store_uri)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    proc = _worker(shared_store_uri, "--seed", "1", "--barrier", str(barrier))
    while proc.poll() is None and not list(barrier.glob("ready-*")):
        time.sleep(0.01)
    (barrier / "go").touch()
    while proc.poll() is None:
        open_store(shared_store_uri)  # cleans only what dead processes left
    code, out = _finish(proc)
    assert code == 0 and store.version_ids() == [json.loads(out)["id"]]
