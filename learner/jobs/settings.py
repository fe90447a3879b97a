"""Validated settings of the job system (DESIGN.md §6), read from `JANUS_*` environment variables.

JANUS_REDIS_URL              broker and result backend; unset: the embedded redis-server
JANUS_DATA_DIR               data dir (embedded Redis files, default store)
JANUS_STORE                  the version store (default $JANUS_DATA_DIR/store)
JANUS_DATASET_ROOTS          folders a job may read datasets from (os.pathsep-separated)
JANUS_QUEUE                  Celery queue of learn jobs
JANUS_JOB_SOFT_TIME_LIMIT_S  a job is asked to stop after this long …
JANUS_JOB_TIME_LIMIT_S       … and killed after this long
JANUS_VISIBILITY_TIMEOUT_S   an unacknowledged job is redelivered after this long (> the above)
JANUS_RESTORE_INTERVAL_S     how often a worker looks for such jobs
JANUS_RESULT_EXPIRES_S       job results and records are kept this long
JANUS_MIN_PER_CLASS          fewest images a new class may bring
JANUS_MAX_ATTEMPTS           deliveries of one job (each lost worker is one) before it fails
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapters_store.settings import default_store_uri

_ENV = {
    "redis_url": "JANUS_REDIS_URL",
    "data_dir": "JANUS_DATA_DIR",
    "store": "JANUS_STORE",
    "dataset_roots": "JANUS_DATASET_ROOTS",
    "queue": "JANUS_QUEUE",
    "soft_time_limit_s": "JANUS_JOB_SOFT_TIME_LIMIT_S",
    "time_limit_s": "JANUS_JOB_TIME_LIMIT_S",
    "visibility_timeout_s": "JANUS_VISIBILITY_TIMEOUT_S",
    "restore_interval_s": "JANUS_RESTORE_INTERVAL_S",
    "result_expires_s": "JANUS_RESULT_EXPIRES_S",
    "min_per_class": "JANUS_MIN_PER_CLASS",
    "max_attempts": "JANUS_MAX_ATTEMPTS",
    "max_dataset_bytes": "JANUS_MAX_DATASET_BYTES",
}


def default_data_dir() -> Path:
    return Path("~/.local/share/janus").expanduser()


class JobSettings(BaseModel):
    """Where the queue, store and datasets are, and how long a job may take."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    redis_url: str | None = Field(None, description="redis://[:password@]host:port/db")
    data_dir: Path = Field(default_factory=default_data_dir)
    store: str = Field("", description="version store URI; empty: $JANUS_DATA_DIR/store")
    dataset_roots: tuple[Path, ...] = Field(
        (), description="folders jobs may read; empty: $JANUS_DATA_DIR/datasets"
    )
    queue: str = Field("janus-learn", pattern=r"^[A-Za-z0-9_.\-]{1,100}$")
    soft_time_limit_s: float = Field(6 * 3600.0, gt=0)
    time_limit_s: float = Field(6 * 3600.0 + 600.0, gt=0)
    visibility_timeout_s: float = Field(7 * 3600.0, gt=0)
    restore_interval_s: float = Field(30.0, gt=0)
    result_expires_s: float = Field(7 * 86400.0, gt=0)
    min_per_class: int = Field(5, ge=2, description="≥ 2: one for training, one held out")
    max_attempts: int = Field(3, ge=1)
    max_dataset_bytes: int = Field(2 << 30, gt=0)

    @model_validator(mode="after")
    def _check(self) -> JobSettings:
        if not self.soft_time_limit_s < self.time_limit_s < self.visibility_timeout_s:
            raise ValueError(
                "need JANUS_JOB_SOFT_TIME_LIMIT_S < JANUS_JOB_TIME_LIMIT_S < "
                f"JANUS_VISIBILITY_TIMEOUT_S (got {self.soft_time_limit_s:g}, "
                f"{self.time_limit_s:g}, {self.visibility_timeout_s:g}): a job still running "
                "when its visibility timeout passes is delivered a second time"
            )
        if self.redis_url is not None and not self.redis_url.startswith(("redis://", "rediss://")):
            raise ValueError(
                f"JANUS_REDIS_URL must start with redis:// or rediss://, got {self.redis_url!r}"
            )
        return self

    @property
    def store_uri(self) -> str:
        return self.store or default_store_uri({"JANUS_DATA_DIR": str(self.data_dir)})

    @property
    def allowed_roots(self) -> tuple[Path, ...]:
        roots = self.dataset_roots or (self.data_dir / "datasets",)
        return tuple(Path(os.path.realpath(root)) for root in roots)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> JobSettings:
        """Settings from `JANUS_*` variables (unset or empty ones keep their default)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field, var in _ENV.items():
            raw = env.get(var, "")
            if raw:
                values[field] = raw.split(os.pathsep) if field == "dataset_roots" else raw
        values.update(overrides)
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            names = {field: _ENV.get(field, field) for field in cls.model_fields}
            where = ", ".join(
                names.get(str(e["loc"][0]), str(e["loc"][0])) for e in err.errors() if e["loc"]
            )
            raise ValueError(f"invalid job settings ({where or 'environment'}): {err}") from None
