"""Job fixtures: a real Redis (the embedded redis-server) and real `janus worker` processes.

Workers are started as their own process group (`python -m service.cli worker`, a Celery prefork
worker with one child) against a temporary store, with short time limits and visibility timeout so
that redelivery after a lost worker happens within seconds. Everything is stopped at teardown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from learner.config import LoRAConfig
from learner.data import LabeledBatch, write_class_folders
from learner.jobs.app import create_app
from learner.jobs.client import JobStatus, LearnRequest, submit, wait
from learner.jobs.redis_embedded import EmbeddedRedis, start_embedded
from learner.jobs.settings import JobSettings
from service.process_group import spawn_group, stop_group
from tests.conftest import TINY_BACKBONES

REPO = Path(__file__).resolve().parents[2]
TIMINGS = {  # short, so a lost worker's job comes back within seconds in tests
    "JANUS_JOB_SOFT_TIME_LIMIT_S": "40",
    "JANUS_JOB_TIME_LIMIT_S": "45",
    "JANUS_HEARTBEAT_S": "2",
    "JANUS_VISIBILITY_TIMEOUT_S": "10",
    "JANUS_RESTORE_INTERVAL_S": "1",
}


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = start_embedded(tmp_path_factory.mktemp("redis-data"))
    yield server
    server.stop()


@dataclass
class Worker:
    """A `janus worker` process group."""

    process: subprocess.Popen[bytes]
    log: Path

    @property
    def hostname(self) -> str:
        return f"janus-{self.process.pid}@{socket.gethostname()}"

    def wait_ready(self, app: Celery, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log.read_text()[-2000:]}")
            if app.control.ping(destination=[self.hostname], timeout=0.5):
                return
        raise TimeoutError(f"worker not ready: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL to the whole group (worker and its pool child), like a machine dying."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 30.0) -> None:
        stop_group(self.process, timeout, linger_s=5.0)


def start_worker(env: dict[str, str], log: Path) -> Worker:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_")}
    full = {**clean, **env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "service.cli", "worker", "--loglevel=INFO"]
    return Worker(spawn_group(cmd, full, log, REPO), log)


def wait_training(app: Celery, job_id: str, timeout: float) -> JobStatus:
    """The job's status once it has trained two steps: mid-training, the moment to kill its
    worker."""
    return wait(
        app,
        job_id,
        timeout=timeout,
        poll_s=0.1,
        until=lambda s: bool(s.progress and s.progress.get("step", 0) >= 2),
    )


@dataclass
class JobEnv:
    """A store, an allowed dataset root, settings and a client app for one set of workers."""

    root: Path
    env: dict[str, str]
    settings: JobSettings
    app: Celery

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    def dataset(
        self, digits: LabeledBatch, name: str, classes: list[str], per_class: int = 40
    ) -> Path:
        batch = digits.select_classes(classes)
        keep = [
            i for c in range(len(classes)) for i in (batch.labels == c).nonzero()[0][:per_class]
        ]
        return write_class_folders(batch.subset(keep), self.datasets / name)

    def request(self, dataset: Path, **fields: Any) -> LearnRequest:
        train = {"epochs": 1, "num_threads": 1, "design_samples": 64, **fields.pop("train", {})}
        return LearnRequest(
            dataset=str(dataset),
            backbone=TINY_BACKBONES["convnet"],
            lora=LoRAConfig(rank=4),
            train=train,
            **fields,
        )

    def run(self, request: LearnRequest, timeout: float = 120.0) -> JobStatus:
        return wait(self.app, submit(self.app, request), timeout=timeout, poll_s=0.2)


def make_job_env(root: Path, redis_url: str, queue: str) -> JobEnv:
    env = {
        "JANUS_REDIS_URL": redis_url,
        "JANUS_DATA_DIR": str(root / "data"),
        "JANUS_STORE": str(root / "store"),
        "JANUS_DATASET_ROOTS": str(root / "datasets"),
        "JANUS_QUEUE": queue,
        **TIMINGS,
    }
    (root / "datasets").mkdir(parents=True, exist_ok=True)
    settings = JobSettings.from_env(env)
    return JobEnv(root, env, settings, create_app(settings))


@contextlib.contextmanager
def running_worker(root: Path, redis_url: str, queue: str) -> Iterator[JobEnv]:
    """A job environment under `root` with one ready worker on `queue`, stopped at the end."""
    jobs = make_job_env(root, redis_url, queue)
    worker = start_worker(jobs.env, jobs.root / "worker.log")
    try:
        worker.wait_ready(jobs.app)
        yield jobs
    finally:
        worker.stop()
        jobs.app.close()


@pytest.fixture(scope="session")
def job_env(
    tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis
) -> Iterator[JobEnv]:
    """A worker on queue `janus-learn` for the whole session."""
    with running_worker(tmp_path_factory.mktemp("jobs"), redis_server.url, "janus-learn") as jobs:
        yield jobs
