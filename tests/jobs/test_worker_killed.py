"""A worker killed with SIGKILL mid-training: its job is delivered again and published once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters_store import open_store, verify_store
from learner.data import LabeledBatch
from learner.jobs.client import attempts_key, redis_client, submit, wait
from learner.jobs.redis_embedded import EmbeddedRedis
from tests.jobs.conftest import JobEnv, Worker, make_job_env, start_worker

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
        training = wait(
            kill_env.app,
            job_id,
            timeout=60,
            poll_s=0.1,
            until=lambda s: bool(s.progress and s.progress.get("step", 0) >= 2),
        )
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
