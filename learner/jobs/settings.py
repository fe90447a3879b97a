"""Settings of the job system (DESIGN.md §6): the queue, where datasets may come from, time limits.

Read from `JANUS_*` variables (pydantic-settings, `adapters_store.settings.JanusSettings`), with
the data directory and the store of `DataSettings`. `janus settings` lists every variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from adapters_store.settings import DataSettings
from learner.device import DEVICE_PATTERN, Precision
from learner.jobs.redis_url import parse_redis_url


class JobSettings(DataSettings):
    """Where the queue, store and datasets are, and how long a job may take."""

    redis_url: str | None = Field(
        None,
        description="Redis of the job queue: redis://[[user]:password@]host:port/db, "
        "rediss://… (TLS, certificate verified), or a master through Sentinel, "
        "redis+sentinel://[[user]:password@]host:26379[,host:26379…]/master-name[/db]"
        "[?sentinel_password=…] (the password is the master's); "
        "unset: the embedded redis-server of the data directory",
    )
    dataset_roots: Annotated[tuple[Path, ...], NoDecode] = Field(
        (),
        description="folders learn jobs may read datasets from (separated by ':'); "
        "empty: $JANUS_DATA_DIR/datasets",
    )
    queue: str = Field(
        "janus-learn", pattern=r"^[A-Za-z0-9_.\-]{1,100}$", description="Celery queue of learn jobs"
    )
    job_soft_time_limit_s: float = Field(
        6 * 3600.0, gt=0, description="a learn job is asked to stop after this long"
    )
    job_time_limit_s: float = Field(
        6 * 3600.0 + 600.0, gt=0, description="a learn job is killed after this long"
    )
    visibility_timeout_s: float = Field(
        120.0,
        gt=0,
        description="a running job whose heartbeat stopped this long ago (its worker died) is "
        "delivered again",
    )
    heartbeat_s: float = Field(
        20.0, gt=0, description="how often a running job tells the broker it is alive"
    )
    restore_interval_s: float = Field(
        30.0, gt=0, description="how often a worker looks for jobs to deliver again"
    )
    result_expires_s: float = Field(
        7 * 86400.0, gt=0, description="job results and records are kept this long"
    )
    min_per_class: int = Field(
        5, ge=2, description="fewest images a new class may bring (one is held out, at least)"
    )
    eval_per_class: int = Field(
        20,
        ge=0,
        le=10_000,
        description="held-out images per new class a learn job keeps as an evaluation set for "
        "the promotion gate (0: none); a request's eval_per_class overrides it",
    )
    max_attempts: int = Field(
        3, ge=1, description="deliveries of one job (each lost worker is one) before it fails"
    )
    max_dataset_bytes: int = Field(
        2 << 30, gt=0, description="largest dataset (archive or unpacked) a learn job reads"
    )
    device: str = Field(
        "auto",
        pattern=DEVICE_PATTERN,
        description="where a worker trains: auto (CUDA if there is one), cpu, cuda or cuda:N",
    )
    precision: Precision = Field(
        "fp32", description="a worker's frozen forward: fp32, or bf16 autocast (statistics fp32+)"
    )
    loader_workers: int | None = Field(
        None,
        ge=0,
        le=64,
        description="processes that decode a learn job's images while it trains (0: in the job's "
        "own process); unset: half the cores, 1 to 8",
    )

    @field_validator("dataset_roots", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part for part in value.split(os.pathsep) if part)
        return value

    @model_validator(mode="after")
    def _check(self) -> JobSettings:
        if not self.job_soft_time_limit_s < self.job_time_limit_s:
            raise ValueError(
                "need JANUS_JOB_SOFT_TIME_LIMIT_S < JANUS_JOB_TIME_LIMIT_S (got "
                f"{self.job_soft_time_limit_s:g}, {self.job_time_limit_s:g}): the soft limit asks "
                "the job to stop, the hard one kills it"
            )
        if self.visibility_timeout_s < 3 * self.heartbeat_s:
            raise ValueError(
                f"need JANUS_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s:g}) ≥ 3 × "
                f"JANUS_HEARTBEAT_S ({self.heartbeat_s:g}): a job whose heartbeats are late "
                "would be delivered a second time while it runs"
            )
        if self.redis_url is not None:
            parse_redis_url(self.redis_url)  # a message that says what to write
        return self

    @property
    def allowed_roots(self) -> tuple[Path, ...]:
        """The dataset roots, resolved (symlinks followed)."""
        roots = self.dataset_roots or (self.data_dir / "datasets",)
        return tuple(Path(os.path.realpath(root)) for root in roots)
