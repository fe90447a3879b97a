"""The `janus.learn` job: a labeled batch in, a published (and maybe serving) version out.

Steps: validate the arguments; load the parent's state from the store; load and check the batch
(only new classes, enough images each, every image read at the model's side through the image
path the service takes, `learner.data.images`); hold out part of it; learn the new classes as
one continual-learning task (progress is the job's state: phase, epoch, step, loss, samples/s,
ETA); evaluate on the held-out images; keep a sample of them as an evaluation set and evaluate
the candidate against the serving version (`learner.jobs.evaluation`: the promotion gate); export
the merged model to ONNX and check it against torch on held-out images; publish the version with
its metrics, evaluation and job id under the job's idempotency key; activate it by policy (a
version the gate rejects is published as rejected and recorded in the serving log); announce the
serving change on Redis.

Redelivery is safe: a job whose idempotency key already names a version returns that version
(finishing its activation if needed) without training, and a job delivered more than
`max_attempts` times (its worker keeps dying) fails instead of looping. Torch and the trainer are
imported inside the job, so the worker's parent process never loads them.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from celery import Task as CeleryTask
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from pydantic import ValidationError

from adapters_store import Manifest, StoreError, VersionStore, open_store
from learner.data import Batch, DataError, holdout_split, in_memory
from learner.jobs.app import app_settings
from learner.jobs.client import (
    LearnRequest,
    announce,
    attempts_key,
    cancel_key,
    heartbeat_key,
    redis_client,
)
from learner.jobs.intake import open_dataset, open_new_classes, under_roots
from learner.jobs.settings import JobSettings

if TYPE_CHECKING:
    from adapters_store.manifest import Evaluation
    from learner.state import LearnerState
    from learner.train import Progress, TaskResult

PROGRESS_EVERY_S = 0.5


class JobFailed(Exception):
    """A learn job cannot complete; the message says which input was wrong and what to do."""


class JobCancelled(Exception):
    """`janus cancel` asked the job to stop."""


class _Reporter:
    """Job state updates (throttled, every phase change) and the cooperative cancel check."""

    def __init__(self, job: CeleryTask, client: redis.Redis, job_id: str) -> None:
        self.job, self.client, self.job_id = job, client, job_id
        self._last, self._phase = 0.0, ""

    def check_cancel(self) -> None:
        if self.client.exists(cancel_key(self.job_id)):
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def phase(self, name: str, **extra: Any) -> None:
        self.check_cancel()
        self._phase, self._last = name, time.monotonic()
        self.job.update_state(state="PROGRESS", meta={"phase": name, **extra})

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if p.phase == self._phase and now - self._last < PROGRESS_EVERY_S:
            return
        self.check_cancel()
        self._phase, self._last = p.phase, now
        meta = {
            "phase": p.phase,
            "epoch": p.epoch,
            "epochs": p.epochs,
            "step": p.step,
            "steps": p.steps,
            "loss": p.loss if math.isfinite(p.loss) else None,
            "samples_per_s": p.samples_per_s,
            "eta_s": p.eta_s if math.isfinite(p.eta_s) else None,
        }
        self.job.update_state(state="PROGRESS", meta=meta)


UNACKED_INDEX = "unacked_index"
"""Kombu's Redis transport: the sorted set of delivered, unacknowledged messages by delivery
time; its restore loop delivers again those older than the visibility timeout."""


class _Heartbeat:
    """While a job runs, every `JANUS_HEARTBEAT_S`: its message's delivery time in the broker's
    unacknowledged index moves to now, and `janus:heartbeat:<id>` is renewed (expiring after
    three beats). A job whose worker dies stops beating: `janus jobs` shows it `lost` after three
    missed beats, and the broker delivers it again a visibility timeout after the last beat
    (minutes), to the next live worker, while a job that runs for hours is never delivered
    twice."""

    def __init__(
        self, client: redis.Redis, job_id: str, tag: str | None, settings: JobSettings
    ) -> None:
        self.client, self.job_id, self.tag = client, job_id, tag
        self.every_s, self.ttl_s = settings.heartbeat_s, max(1, round(3 * settings.heartbeat_s))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="janus-heartbeat", daemon=True)

    def beat(self) -> None:
        with self.client.pipeline() as pipe:
            if self.tag is not None:  # xx: never re-add a message already acknowledged
                pipe.zadd(UNACKED_INDEX, {self.tag: time.time()}, xx=True)
            pipe.set(heartbeat_key(self.job_id), time.time(), ex=self.ttl_s)
            pipe.execute()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            with contextlib.suppress(redis.RedisError):  # the next beat tries again
                self.beat()

    def __enter__(self) -> _Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s + 5)
        with contextlib.suppress(redis.RedisError):
            self.client.delete(heartbeat_key(self.job_id))


def _parent_id(store: VersionStore, request: LearnRequest) -> str | None:
    if request.parent == "root":
        return None
    if request.parent == "serving":
        return store.serving()
    return store.get(request.parent).id


def _parent_state(
    store: VersionStore, parent: str | None, request: LearnRequest, settings: JobSettings
) -> LearnerState:
    from learner.config import BackboneConfig, LoRAConfig
    from learner.jobs.versioning import load_state
    from learner.state import LearnerState

    if parent is None:
        backbone = request.backbone or BackboneConfig()
        if backbone.weights == "file":  # a path the request names: only where datasets may be
            weights = Path(os.path.realpath(str(backbone.path)))
            roots = (*settings.allowed_roots, Path(os.path.realpath(settings.data_dir / "weights")))
            if not under_roots(weights, roots):
                raise JobFailed(
                    f"backbone weights {backbone.path} are outside the folders a learn job may "
                    f"read ({', '.join(map(str, roots))}); copy the file there"
                )
        return LearnerState(backbone, request.lora or LoRAConfig())
    state = load_state(store, parent)
    if request.backbone is not None and request.backbone != state.backbone:
        raise JobFailed(
            f"backbone {request.backbone.name} differs from parent {parent}'s "
            f"{state.backbone.name}; a version keeps its parent's backbone — drop `backbone` "
            "or use parent='root'"
        )
    return state


def _reuse(
    store: VersionStore, existing: Manifest, request: LearnRequest, digest: str
) -> tuple[Manifest, bool]:
    """A retried or repeated job: the version its key names, activated if the policy says so."""
    if existing.data_digest != digest:
        raise JobFailed(
            f"idempotency key {existing.idempotency_key!r} already published {existing.id} from "
            "other data; use a new key for a new batch"
        )
    if not _activate_by_policy(request, existing.evaluation):
        return existing, False
    entry = store.activate_unless_served(
        existing.id, actor=request.actor, reason=request.reason or "learn job retry"
    )
    return existing, entry is not None


def _activate_by_policy(request: LearnRequest, evaluation: Evaluation | None) -> bool:
    """auto: always; gate: unless the gate rejected it; manual: never."""
    if request.activation == "gate":
        return evaluation is None or evaluation.rejected is None
    return request.activation == "auto"


@contextlib.contextmanager
def _open_batch(
    request: LearnRequest, settings: JobSettings, known: Sequence[str], side: int
) -> Iterator[Batch]:
    """The job's batch, open for as long as the job trains: its files (an archive or a staged
    dataset extracted to a temporary folder) are decoded at the model's side through the
    service's image path when read, never held whole."""
    with (
        open_dataset(
            request.dataset,
            roots=settings.allowed_roots,
            store_uri=settings.store_uri,
            max_bytes=settings.max_dataset_bytes,
        ) as path,
        open_new_classes(
            path,
            known,
            image_size=side,
            min_per_class=settings.min_per_class,
            max_bytes=settings.max_dataset_bytes,
            shown=request.dataset,
        ) as batch,
    ):
        yield batch


def _train_and_publish(
    store: VersionStore,
    request: LearnRequest,
    settings: JobSettings,
    report: _Reporter,
    job_id: str,
    key: str,
) -> dict[str, Any]:
    from learner.backbones import input_spec
    from learner.device import resolve_device
    from learner.inputs import prepare, to_uint8_tensor
    from learner.jobs.evaluation import holdout_sample
    from learner.jobs.versioning import publish_state, state_backbone
    from learner.loader import default_workers
    from learner.onnx_export import check_onnx, export_onnx
    from learner.train import evaluate, learn_task

    cfg = request.train_config()
    report.phase("load")
    existing = store.find_by_key(key)
    if existing is not None:  # checked first: a retry's parent may be its own published version
        side = input_spec(state_backbone(existing)).size
        with _open_batch(request, settings, known=(), side=side) as batch:
            digest = f"sha256:{batch.digest()}"
        version, activated = _reuse(store, existing, request, digest)
        return _result(store, version, activated, reused=True)
    parent = _parent_id(store, request)
    state = _parent_state(store, parent, request, settings)
    side = input_spec(state.backbone).size
    device = resolve_device(settings.device)
    workers = default_workers() if settings.loader_workers is None else settings.loader_workers
    with _open_batch(request, settings, known=state.class_names, side=side) as batch:
        digest = f"sha256:{batch.digest()}"
        train, holdout = holdout_split(batch, request.holdout_fraction, seed=cfg.seed)
        result = learn_task(state, train, cfg, report, device, settings.precision, workers)
        report.phase("evaluate")
        metrics = dict(result.metrics)
        metrics["holdout_accuracy_new"] = evaluate(
            result.model, holdout, result.state.class_names, workers
        )
        per_class = settings.eval_per_class
        per_class = per_class if request.eval_per_class is None else request.eval_per_class
        added = []
        if per_class > 0:  # held-out images: never trained on, kept to evaluate what follows
            images, labels = holdout_sample(holdout, per_class, cfg.seed)
            kept = store.evalsets.add(images, labels, kind="holdout", source=f"learn job {job_id}")
            added.append(kept.digest)
        checked = in_memory(holdout.subset(range(min(16, len(holdout)))))  # real images
    evaluation = _evaluate(
        store, request, result, (parent, state), added, metrics["holdout_accuracy_new"]
    )
    model = result.model.cpu()  # exported and checked on the CPU, where serving runs it
    metrics["train_samples"] = float(len(train))
    metrics["holdout_samples"] = float(len(holdout))
    report.phase("export")
    onnx = export_onnx(model, result.state.class_names)
    held_out = prepare(to_uint8_tensor(checked.images), side)
    metrics["onnx_max_rel_diff"] = check_onnx(model, onnx, held_out, tol=1e-4)
    activate = _activate_by_policy(request, evaluation)
    report.phase("publish")
    manifest = publish_state(
        store,
        result.state,
        cfg,
        parent=parent,
        data_digest=digest,
        metrics=metrics,
        onnx=onnx,
        job_id=job_id if _is_key(job_id) else None,
        idempotency_key=key,
        evaluation=evaluation,
        activate=activate,
        actor=request.actor,
        reason=request.reason or f"learn job {job_id}",
    )
    if manifest.rejected is not None:
        store.record_rejection(
            manifest.id, actor=request.actor, reason=f"learn job {job_id}: {manifest.rejected}"
        )
    return _result(store, manifest, activate, reused=False)


def _evaluate(
    store: VersionStore,
    request: LearnRequest,
    result: TaskResult,
    parent: tuple[str | None, LearnerState],
    added: list[str],
    holdout_accuracy_new: float,
) -> Evaluation:
    """The candidate against the version serving now, on the evaluation sets (on the job's
    device), with the gate's verdict unless the policy is `auto`. `parent`: the parent's id and
    the state the job already read (the serving version's, unless another version or the root
    was asked for; `learn_task` leaves it as it was)."""
    from learner.jobs.evaluation import evaluate_candidate
    from learner.jobs.versioning import load_state
    from learner.state import build_model

    serving = store.serving()
    serving_model = None
    if serving is not None:
        state = parent[1] if parent[0] == serving else load_state(store, serving)
        serving_model = (store.get(serving), build_model(state).to(result.model.device))
    thresholds = None
    if request.activation != "auto":
        r = request
        thresholds = (r.gate_accuracy, r.gate_max_old_drop, r.gate_max_forgetting)
    return evaluate_candidate(
        store,
        result.model,
        result.state.class_names,
        result.state.class_names[-result.state.task_sizes[-1] :],
        parent=parent[0],
        added=added,
        serving_model=serving_model,
        holdout_accuracy_new=holdout_accuracy_new,
        thresholds=thresholds,
    )


def _is_key(value: str) -> bool:
    from adapters_store.paths import KEY

    return KEY.fullmatch(value) is not None and ".." not in value


def _result(
    store: VersionStore, manifest: Manifest, activated: bool, reused: bool
) -> dict[str, Any]:
    e = manifest.evaluation
    return {
        "version": manifest.id,
        "parent": manifest.parent,
        "classes": list(manifest.new_classes),
        "metrics": dict(manifest.metrics),
        "activated": activated,
        "serving": store.serving(),
        "reused": reused,
        "rejected": manifest.rejected,
        "evaluation": None
        if e is None
        else {
            "against": e.against,
            "new_accuracy": e.new_accuracy,
            "old_accuracy": e.old_accuracy,
            "old_accuracy_serving": e.old_accuracy_serving,
            "old_drop": e.old_drop,
            "forgetting": e.forgetting,
            "passed": None if e.gate is None else e.gate.passed,
        },
    }


def learn_job(job: CeleryTask, **kwargs: Any) -> dict[str, Any]:
    """The body of `janus.learn` (bound: `job` is the Celery task; kwargs: a LearnRequest)."""
    job_id = str(job.request.id)
    settings = app_settings(job.app)
    tag = (getattr(job.request, "properties", None) or {}).get("delivery_tag")  # kombu's
    with (
        redis_client(job.app) as client,
        _Heartbeat(client, job_id, tag, settings),
    ):
        return _run(job, client, job_id, settings, kwargs)


def _run(
    job: CeleryTask, client: redis.Redis, job_id: str, settings: JobSettings, kwargs: dict[str, Any]
) -> dict[str, Any]:
    report = _Reporter(job, client, job_id)
    attempt = int(client.incr(attempts_key(job_id)))
    client.expire(attempts_key(job_id), int(settings.result_expires_s))
    try:
        if attempt > settings.max_attempts:
            raise JobFailed(
                f"the worker was lost {attempt - 1} times while running this job (out of memory? "
                "see the worker log); not retrying — fix the cause and submit it again"
            )
        try:
            request = LearnRequest.model_validate(kwargs)
        except ValidationError as err:
            raise JobFailed(f"invalid job arguments: {err}") from None
        store = open_store(settings.store_uri)
        key = request.idempotency_key or f"job-{job_id}"
        before = store.serving()
        result = _train_and_publish(store, request, settings, report, job_id, key)
    except JobCancelled as exc:
        job.backend.mark_as_revoked(job_id, str(exc), request=job.request)
        raise Ignore() from None
    except SoftTimeLimitExceeded:
        raise JobFailed(
            f"the job ran past its soft time limit ({settings.job_soft_time_limit_s:g} s); raise "
            "JANUS_JOB_SOFT_TIME_LIMIT_S (and the hard limit and visibility timeout above it) "
            "or train fewer epochs"
        ) from None
    except (DataError, StoreError, ValueError) as exc:
        raise JobFailed(str(exc)) from None
    if result["activated"] and result["serving"] != before:
        with contextlib.suppress(redis.RedisError):
            announce(
                client,
                {
                    "event": "serving-changed",
                    "version": result["serving"],
                    "previous": before,
                    "store": store.uri,
                    "job_id": job_id,
                    "time": datetime.now(UTC).isoformat(),
                },
            )
    return result
