"""The embedded Redis, and the `janus worker | learn | jobs | cancel` commands end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from adapters_store import open_store
from learner.data import LabeledBatch
from learner.jobs.app import create_app
from learner.jobs.redis_embedded import ensure_embedded, find_running, start_embedded
from learner.jobs.settings import JobSettings
from tests.jobs.conftest import REPO, JobEnv, start_worker

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists()
        and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )


def test_embedded_redis_is_private_and_stops(tmp_path: Path) -> None:
    server = start_embedded(tmp_path)
    try:
        client = server.client()
        assert client.ping() and client.config_get("bind")["bind"] == "127.0.0.1"
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port).ping()
        assert (tmp_path / "redis" / "state.json").stat().st_mode & 0o777 == 0o600
        reused = ensure_embedded(tmp_path)  # a second user of the data dir reuses it
        assert not reused.owner and reused.port == server.port and "password" not in repr(reused)
        client.set("kept", "1")
    finally:
        server.stop()
    assert not _alive(server.pid) and find_running(tmp_path) is None
    again = start_embedded(tmp_path)  # the append-only file brings queued data back
    try:
        assert again.client().get("kept") == b"1"
    finally:
        again.stop()


def test_worker_starts_and_stops_embedded_redis(tmp_path: Path) -> None:
    env = {"JANUS_DATA_DIR": str(tmp_path / "data"), "JANUS_STORE": str(tmp_path / "store")}
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 30
        while (running := find_running(tmp_path / "data")) is None:
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(0.2)
        app = create_app(JobSettings.from_env(env))
        worker.wait_ready(app)
        app.close()
    finally:
        worker.stop()
    assert not _alive(running.pid), "the worker must stop the Redis it started"


def _janus(env: JobEnv, *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_")}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO,
        env={**full, **env.env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_cli_learn_wait_jobs_cancel(job_env: JobEnv, digits: LabeledBatch, tmp_path: Path) -> None:
    # The CLI has no backbone option (a first version uses the default one), so the tiny-model
    # root comes through the API and the CLI learns on top of it.
    root = job_env.run(
        job_env.request(job_env.dataset(digits, "cli-root", ["digit5"]), parent="root")
    )
    assert root.state == "succeeded", root.error
    outside = job_env.dataset(digits, "cli", ["digit1", "digit2"]).rename(tmp_path / "cli")
    args = ["learn", str(outside), "--parent", str(root.version), "--wait", "--json"]
    args += ["--activation", "manual", "--key", "cli-1", "--epochs", "1"]
    args += ["--set", "num_threads=1", "--set", "design_samples=64"]
    done = _janus(job_env, *args)
    assert done.returncode == 0, done.stderr
    final = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(final) == {"job_id", "state", "version", "error", "rejected"}
    assert final["state"] == "succeeded" and final["error"] is None
    assert "staged" in done.stderr  # outside the allowed roots: copied into the store
    manifest = open_store(job_env.settings.store_uri).get(final["version"])
    assert manifest.parent == root.version and manifest.idempotency_key == "cli-1"

    shown = _janus(job_env, "jobs", final["job_id"], "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["version"] == final["version"]
    shown = _janus(job_env, "jobs", final["job_id"])  # fields, not JSON
    fields = dict(line.split(maxsplit=1) for line in shown.stdout.splitlines())
    assert (fields["job"], fields["state"], fields["version"]) == (
        final["job_id"],
        "succeeded",
        final["version"],
    )
    listed = _janus(job_env, "jobs", "--json")
    assert final["job_id"] in [j["job_id"] for j in json.loads(listed.stdout)]
    listed = _janus(job_env, "jobs", "--limit", "50")  # a table, newest first
    header, *rows = listed.stdout.splitlines()
    assert listed.returncode == 0 and header.split()[:2] == ["JOB", "STATE"]
    assert rows[0].split()[:2] == [final["job_id"], "succeeded"] and final["version"] in rows[0]
    for args in (["cancel", final["job_id"]], ["cancel", final["job_id"], "--json"]):
        late = _janus(job_env, *args)
        assert late.returncode == 1 and "already succeeded" in late.stderr and not late.stdout
    missing = _janus(job_env, "jobs", "no-such-job")
    assert missing.returncode == 1 and "no job" in missing.stderr
    unknown = _janus(job_env, "cancel", "no-such-job")
    assert unknown.returncode == 1 and "no job no-such-job" in unknown.stderr
    assert "Traceback" not in unknown.stderr
