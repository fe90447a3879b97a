"""A worker killed with SIGKILL mid-training: its job is delivered again and published once,
within seconds with the tests' short timings and within minutes with the defaults."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters_store import open_store, verify_store
from learner.data import LabeledBatch
from learner.jobs.app import create_app
from learner.jobs.client import attempts_key, redis_client, status, submit, wait
from learner.jobs.redis_embedded import EmbeddedRedis, start_embedded
from learner.jobs.settings import JobSettings
from tests.jobs.conftest import (
    TIMINGS,
    JobEnv,
    Worker,
    make_job_env,
    start_worker,
    wait_training,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def kill_env(tmp_path: Path, redis_server: EmbeddedRedis) -> Iterator[JobEnv]:
    jobs = make_job_env(tmp_path, redis_server.url, "janus-kill-test")
    yield jobs
    jobs.app.close()


def test_killed_worker_job_is_redelivered_and_published_once(
    kill_env: JobEnv, digits: LabeledBatch
) -> None:
    data = kill_env.dataset(digits, "slow", ["digit3", "digit4"], per_class=100)
    request = kill_env.request(data, parent="root", idempotency_key="kill-1", train={"epochs": 15})
    workers: list[Worker] = []
    try:
        workers.append(start_worker(kill_env.env, kill_env.root / "worker-1.log"))
        workers[0].wait_ready(kill_env.app)
        job_id = submit(kill_env.app, request)
        training = wait_training(kill_env.app, job_id, timeout=60)
        assert training.state == "running", training
        workers[0].kill()  # SIGKILL to the worker and its pool child, mid-training

        store = open_store(kill_env.settings.store_uri)
        assert store.find_by_key("kill-1") is None
        assert store.versions() == []  # nothing partial is visible

        workers.append(start_worker(kill_env.env, kill_env.root / "worker-2.log"))
        done = wait(kill_env.app, job_id, timeout=150, poll_s=0.2)
        assert done.state == "succeeded", done.error
    finally:
        for worker in workers:
            worker.stop()

    store = open_store(kill_env.settings.store_uri)
    assert [m.id for m in store.versions() if m.idempotency_key == "kill-1"] == [done.version]
    assert len(store.versions()) == 1 and verify_store(store).ok
    assert int(redis_client(kill_env.app).get(attempts_key(job_id)) or 0) == 2


@pytest.mark.chaos
@pytest.mark.timeout(600)
def test_a_whole_worker_killed_with_default_timings_has_its_job_rerun_within_minutes(
    tmp_path: Path, digits: LabeledBatch
) -> None:
    """The default heartbeat, visibility timeout and restore interval: the job shows `lost`, a
    new worker runs it again and publishes one version, all within 5 minutes of the kill.

    Its own Redis: the broker's index of unacknowledged messages is one per Redis database, and
    every worker restores from it with its own visibility timeout, so the other tests' workers
    (10 s) would deliver this job again while it runs. Workers sharing a Redis must share the
    timings (DESIGN.md §6)."""
    redis_server = start_embedded(tmp_path / "redis")
    try:
        _killed_with_default_timings(tmp_path, redis_server, digits)
    finally:
        redis_server.stop()


def _killed_with_default_timings(
    tmp_path: Path, redis_server: EmbeddedRedis, digits: LabeledBatch
) -> None:
    short = make_job_env(tmp_path, redis_server.url, "janus-kill-default")
    short.app.close()
    env = {k: v for k, v in short.env.items() if k not in TIMINGS}  # the defaults
    settings = JobSettings.from_env(env)
    jobs = JobEnv(short.root, env, settings, create_app(settings))
    data = jobs.dataset(digits, "long", ["digit1", "digit2"], per_class=100)
    request = jobs.request(
        data, parent="root", idempotency_key="kill-default", train={"epochs": 15}
    )
    workers: list[Worker] = []
    try:
        workers.append(start_worker(jobs.env, jobs.root / "worker-1.log"))
        workers[0].wait_ready(jobs.app)
        job_id = submit(jobs.app, request)
        wait(jobs.app, job_id, timeout=90, poll_s=0.2, until=lambda s: s.state == "running")
        workers[0].kill()  # the worker and its pool child, as a host crash would
        killed = time.monotonic()
        workers.append(start_worker(jobs.env, jobs.root / "worker-2.log"))
        lost = wait(jobs.app, job_id, timeout=300, poll_s=1, until=lambda s: s.state == "lost")
        lost_after = time.monotonic() - killed
        done = wait(jobs.app, job_id, timeout=300, poll_s=1)
        published_after = time.monotonic() - killed
    finally:
        for worker in workers:
            worker.stop()
        jobs.app.close()
    assert lost.state == "lost" and done.state == "succeeded", done.error
    store = open_store(settings.store_uri)
    versions = [m.id for m in store.versions() if m.idempotency_key == "kill-default"]
    print(
        f"\nworker killed mid-job (defaults: heartbeat {settings.heartbeat_s:g} s, visibility "
        f"{settings.visibility_timeout_s:g} s, restore every {settings.restore_interval_s:g} s): "
        f"shown lost after {lost_after:.0f} s, re-run and published after "
        f"{published_after / 60:.1f} min, {len(versions)} version(s) for its key"
    )
    assert versions == [done.version] and verify_store(store).ok
    assert published_after < 300
    assert status(jobs.app, job_id).state == "succeeded"
