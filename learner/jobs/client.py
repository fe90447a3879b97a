"""Learn jobs from the caller's side: their arguments, submit, status, list, cancel, announcements.

Used by the CLI and the service; imports neither torch nor the trainer. Job records (what was
asked, when) live in Redis next to Celery's results and expire with them:

    janus:jobs            sorted set of job ids by submission time
    janus:job:<id>        the job's request (JSON) and submission time
    janus:cancel:<id>     set by `cancel`; the running job polls it (cooperative cancel)
    janus:attempts:<id>   deliveries of the job so far (a lost worker is one)
    janus:heartbeat:<id>  set by the running job every JANUS_HEARTBEAT_S, expiring after three
                          beats: a running job without one has lost its worker
    janus:serving         pub/sub channel: a job changed the serving version
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import redis
from celery import Celery
from celery.result import AsyncResult
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    field_validator,
    model_validator,
)

from adapters_store.paths import VERSION_ID, check_key
from learner.config import BackboneConfig, LoRAConfig, TrainConfig
from learner.jobs.redis_url import redis_from_url
from learner.methods import get_method

LEARN_JOB = "janus.learn"
"""The Celery task name of learn jobs (a Celery "task"; in this project a "task" is a set of new
classes, so the code says "job")."""
SERVING_CHANNEL = "janus:serving"
JOBS_KEY = "janus:jobs"

JobState = Literal["queued", "running", "lost", "succeeded", "failed", "cancelled", "unknown"]
_STATES: dict[str, JobState] = {
    "PENDING": "queued",
    "RECEIVED": "queued",
    "STARTED": "running",
    "PROGRESS": "running",
    "RETRY": "running",
    "SUCCESS": "succeeded",
    "FAILURE": "failed",
    "REVOKED": "cancelled",
}
FINAL: frozenset[JobState] = frozenset({"succeeded", "failed", "cancelled"})


def job_key(job_id: str) -> str:
    return f"janus:job:{job_id}"


def cancel_key(job_id: str) -> str:
    return f"janus:cancel:{job_id}"


def attempts_key(job_id: str) -> str:
    return f"janus:attempts:{job_id}"


def heartbeat_key(job_id: str) -> str:
    return f"janus:heartbeat:{job_id}"


REDIS_TIMEOUTS = {"socket_timeout": 10.0, "socket_connect_timeout": 5.0}
"""Every Redis client of the job system: a hung Redis is an error in seconds, not a hang."""


class LearnRequest(BaseModel):
    """The arguments of a learn job, validated by the caller and again by the worker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str = Field(
        min_length=1,
        max_length=4096,
        description="a path or file:// URI under an allowed root, or datasets/<sha256> (staged)",
    )
    parent: str = Field(
        "serving", description="'serving' (the serving version, if any), 'root', or a version id"
    )
    method: str = Field("janus", description="a method of learner.methods")
    train: dict[str, JsonValue] = Field(
        default_factory=dict, description="learner.config.TrainConfig fields to override"
    )
    backbone: BackboneConfig | None = Field(
        None, description="backbone of a first version (later ones inherit their parent's)"
    )
    lora: LoRAConfig | None = Field(None, description="LoRA of a first version")
    idempotency_key: Annotated[str, AfterValidator(check_key)] | None = Field(
        None, description="a retried or repeated job with this key publishes at most one version"
    )
    activation: Literal["gate", "manual", "auto"] = Field(
        "gate",
        description="gate: serve the new version if it passes the promotion gate, else publish it "
        "as rejected; manual: publish it (rejected if it fails the gate), serve nothing; auto: "
        "serve it without a gate",
    )
    gate_accuracy: float = Field(
        50.0, ge=0, le=100, description="gate: held-out accuracy (%) on the new classes needed"
    )
    gate_max_old_drop: float = Field(
        10.0,
        ge=0,
        le=100,
        description="gate: points of old-class accuracy the candidate may lose against the "
        "serving version, on the evaluation sets (forgetting and confusion with new classes)",
    )
    gate_max_forgetting: float = Field(
        5.0,
        ge=0,
        le=100,
        description="gate: points of old-class accuracy it may lose when choosing among the old "
        "classes only (what it forgot)",
    )
    eval_per_class: int | None = Field(
        None,
        ge=0,
        le=10_000,
        description="held-out images per new class kept as an evaluation set (0: none; default "
        "JANUS_EVAL_PER_CLASS)",
    )
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    actor: str | None = Field(None, max_length=200)
    reason: str = Field("", max_length=500)

    @field_validator("parent")
    @classmethod
    def _parent(cls, value: str) -> str:
        if value not in ("serving", "root") and VERSION_ID.fullmatch(value) is None:
            raise ValueError(
                f"parent must be 'serving', 'root' or a version id (v0001), not {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> LearnRequest:
        self.train_config()  # fails here, with the field name, rather than in the worker
        return self

    def train_config(self) -> TrainConfig:
        """The training config: the method's preset plus the overrides."""
        if "method" in self.train:
            raise ValueError("choose the method with `method`, not train.method")
        return TrainConfig.model_validate({**self.train, "method": get_method(self.method)})


class JobStatus(BaseModel):
    """What `janus jobs` shows; `version` on success, `error` on failure."""

    job_id: str
    state: JobState
    version: str | None = None
    error: str | None = None
    progress: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    submitted_at: str | None = None
    dataset: str | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL

    @property
    def rejected(self) -> str | None:
        """Why the promotion gate rejected the version this job published, if it did."""
        reason = (self.result or {}).get("rejected")
        return str(reason) if reason else None

    def summary(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "version": self.version,
            "error": self.error,
            "rejected": self.rejected,
        }


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def redis_client(app: Celery) -> redis.Redis:
    """A client of the app's Redis (`create_app`'s `janus_redis_url`), with `REDIS_TIMEOUTS`."""
    return redis_from_url(str(app.conf.janus_redis_url), **REDIS_TIMEOUTS)


def _ttl(app: Celery) -> int:
    expires = app.conf.result_expires
    return int(expires.total_seconds() if isinstance(expires, timedelta) else expires)


def submit(app: Celery, request: LearnRequest, job_id: str | None = None) -> str:
    """Queues a learn job; returns its id."""
    job_id = job_id or str(uuid.uuid4())
    body = request.model_dump(mode="json")
    client = redis_client(app)
    now = time.time()
    with client.pipeline() as pipe:
        pipe.hset(
            job_key(job_id),
            mapping={
                "request": json.dumps(body),
                "submitted_at": datetime.fromtimestamp(now, UTC).isoformat(),
            },
        )
        pipe.expire(job_key(job_id), _ttl(app))
        pipe.zadd(JOBS_KEY, {job_id: now})
        pipe.zremrangebyscore(JOBS_KEY, 0, now - _ttl(app))
        pipe.execute()
    try:  # the record first, so a worker never runs a job without one; a failed send removes it
        app.send_task(LEARN_JOB, kwargs=body, task_id=job_id)
    except BaseException:
        with client.pipeline() as pipe:
            pipe.delete(job_key(job_id))
            pipe.zrem(JOBS_KEY, job_id)
            pipe.execute()
        raise
    return job_id


def _error_text(result: Any) -> str:
    if isinstance(result, BaseException):
        args = result.args
        return str(args[0]) if len(args) == 1 else str(result) or type(result).__name__
    return str(result)


def status(app: Celery, job_id: str) -> JobStatus:
    """The state of a job (queued, running with progress, succeeded with its version, …)."""
    client = redis_client(app)
    record = {_text(k): _text(v) for k, v in client.hgetall(job_key(job_id)).items()}
    res = AsyncResult(job_id, app=app)
    celery_state = res.state
    state = _STATES.get(celery_state, "unknown")
    if celery_state == "PENDING" and not record:
        state = "unknown"
    if state == "running" and not client.exists(heartbeat_key(job_id)):
        state = "lost"  # its worker died; the next live worker runs it again
    out: dict[str, Any] = {
        "job_id": job_id,
        "state": state,
        "submitted_at": record.get("submitted_at"),
    }
    if "request" in record:
        out["dataset"] = json.loads(record["request"]).get("dataset")
    info = res.info
    if state == "succeeded" and isinstance(info, dict):
        out["result"] = info
        out["version"] = info.get("version")
    elif state in ("failed", "cancelled"):
        out["error"] = _error_text(info)
    elif state == "running" and isinstance(info, dict):
        out["progress"] = info
    return JobStatus.model_validate(out)


def list_jobs(app: Celery, limit: int = 50) -> list[JobStatus]:
    """The most recent jobs, newest first."""
    ids = redis_client(app).zrevrange(JOBS_KEY, 0, limit - 1)
    return [status(app, _text(raw)) for raw in ids]


def cancel(app: Celery, job_id: str) -> JobStatus:
    """Asks a job to stop: a queued one never starts, a running one stops at its next step."""
    current = status(app, job_id)
    if current.state == "unknown":
        raise ValueError(f"no job {job_id}; list jobs with `janus jobs`")
    if not current.final:
        redis_client(app).set(cancel_key(job_id), "1", ex=_ttl(app))
    return current


def wait(
    app: Celery,
    job_id: str,
    timeout: float | None = None,
    poll_s: float = 0.5,
    on_update: Callable[[JobStatus], None] | None = None,
    until: Callable[[JobStatus], bool] | None = None,
) -> JobStatus:
    """Polls a job until it ends, `until(status)` holds, or `timeout` passes.

    `on_update(status)` sees every poll (a progress bar).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        current = status(app, job_id)
        if on_update is not None:
            on_update(current)
        if current.final or (until is not None and until(current)):
            return current
        if deadline is not None and time.monotonic() > deadline:
            return current
        time.sleep(poll_s)


def announce(client: redis.Redis, message: dict[str, Any]) -> int:
    """Publishes a serving change; returns how many subscribers received it."""
    return int(client.publish(SERVING_CHANNEL, json.dumps(message, sort_keys=True)))
