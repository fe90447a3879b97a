"""`janus worker | learn | jobs | cancel`: run learn jobs and follow them.

Without `JANUS_REDIS_URL` every command uses the embedded Redis of the data dir (starting it if
none runs; the process that started it stops it on exit, and queued jobs persist on disk).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from celery import Celery

from learner.jobs.app import create_app, resolve_redis
from learner.jobs.client import JobStatus, LearnRequest, cancel, list_jobs, status, submit, wait
from learner.jobs.intake import STAGED, stage_dataset
from learner.jobs.settings import JobSettings


def _app() -> tuple[Celery, JobSettings]:
    settings = JobSettings.from_env()
    url, _server = resolve_redis(settings)
    return create_app(settings, url), settings


def _worker(args: argparse.Namespace) -> int:
    settings = JobSettings.from_env()
    url, server = resolve_redis(settings)
    if server is not None:
        print(
            f"janus: embedded Redis on 127.0.0.1:{server.port} ({server.folder})", file=sys.stderr
        )
    app = create_app(settings, url)
    app.worker_main(
        [
            "worker",
            f"--pool={args.pool}",
            f"--concurrency={args.concurrency}",
            f"--queues={settings.queue}",
            f"--loglevel={args.loglevel}",
            f"--hostname=janus-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0


def _dataset_ref(path: str, settings: JobSettings) -> str:
    """A reference the worker may read: the path if under an allowed root, else staged."""
    if STAGED.fullmatch(path):
        return path
    real = Path(os.path.realpath(path))
    if any(real == root or root in real.parents for root in settings.allowed_roots):
        return str(real)
    ref = stage_dataset(real, settings.store_uri)
    print(f"janus: staged {path} in the store as {ref}", file=sys.stderr)
    return ref


def parse_setting(item: str) -> tuple[str, Any]:
    """`key=value` → (key, JSON value or the plain string), for `--set`."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--set takes key=value (a TrainConfig field), got {item!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


class _Bar:
    """A tqdm bar over training steps, with the phase in its description."""

    def __init__(self, enabled: bool) -> None:
        self.bar: Any = None
        self.enabled = enabled

    def __call__(self, job: JobStatus) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(desc=job.state, unit="step", dynamic_ncols=True, file=sys.stderr)
        p = job.progress or {}
        self.bar.set_description(str(p.get("phase", job.state)))
        if p.get("steps"):
            self.bar.total = int(p["steps"])
            self.bar.set_postfix(
                loss=p.get("loss"), img_s=round(float(p.get("samples_per_s") or 0))
            )
            self.bar.update(int(p.get("step", 0)) - self.bar.n)
        if job.final:
            self.bar.close()


def _learn(args: argparse.Namespace) -> int:
    app, settings = _app()
    train = dict(parse_setting(item) for item in args.set)
    if args.epochs:
        train["epochs"] = args.epochs
    request = LearnRequest(
        dataset=_dataset_ref(args.path, settings),
        parent=args.parent,
        method=args.method,
        train=train,
        idempotency_key=args.key,
        activation=args.activation,
        gate_accuracy=args.gate_accuracy,
        reason=args.reason,
    )
    job_id = submit(app, request)
    if not args.wait:
        print(json.dumps({"job_id": job_id, "state": "queued"}) if args.json else job_id)
        return 0
    if not app.control.ping(timeout=1.0):
        print("janus: no worker answers; start one with `janus worker`", file=sys.stderr)
    final = wait(app, job_id, on_update=_Bar(not args.json or sys.stderr.isatty()))
    print(json.dumps(final.summary()))
    return 0 if final.state == "succeeded" else 1


def _show(job: JobStatus) -> str:
    extra = job.version or job.error or ""
    if job.progress:
        p = job.progress
        epoch = f"{p.get('epoch', '-')}/{p.get('epochs', '-')}"
        extra = f"{p.get('phase')} epoch {epoch} step {p.get('step', '-')}/{p.get('steps', '-')}"
    return f"{job.job_id}  {job.state:<9}  {job.submitted_at or '':<32}  {extra}"


def _jobs(args: argparse.Namespace) -> int:
    app, _ = _app()
    if args.id:
        job = status(app, args.id)
        if job.state == "unknown":
            print(f"janus: no job {args.id}; list jobs with `janus jobs`", file=sys.stderr)
            return 1
        print(job.model_dump_json(indent=2) if args.json else _show(job))
        return 0
    jobs = list_jobs(app, args.limit)
    if args.json:
        print(json.dumps([j.model_dump(mode="json") for j in jobs], indent=2))
    else:
        for job in jobs:
            print(_show(job))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    app, _ = _app()
    job = cancel(app, args.id)
    if job.final:
        print(f"janus: job {args.id} already {job.state}", file=sys.stderr)
        return 1
    print(f"cancel requested for {args.id} ({job.state}); it stops at its next step")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds the job commands to the `janus` parser."""
    worker = subparsers.add_parser("worker", help="run a Celery worker for learn jobs")
    worker.add_argument("--pool", choices=["prefork", "solo"], default="prefork")
    worker.add_argument("--concurrency", type=int, default=1, help="training jobs at once")
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(func=_worker)

    learn = subparsers.add_parser("learn", help="queue a learn job for a labeled batch")
    learn.add_argument(
        "path", help="class-folder tree, zip/tar archive, .npz, or datasets/<sha256>"
    )
    learn.add_argument("--parent", default="serving", help="version id, 'serving' or 'root'")
    learn.add_argument("--method", default="janus")
    learn.add_argument("--key", default=None, help="idempotency key (default: one per job)")
    learn.add_argument("--activation", choices=["auto", "manual", "gate"], default="auto")
    learn.add_argument("--gate-accuracy", type=float, default=50.0, help="gate: held-out %%")
    learn.add_argument("--epochs", type=int, default=None)
    learn.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    learn.add_argument("--reason", default="")
    learn.add_argument("--wait", action="store_true", help="follow the job until it ends")
    learn.add_argument("--json", action="store_true", help="print JSON")
    learn.set_defaults(func=_learn)

    jobs = subparsers.add_parser("jobs", help="list learn jobs, or show one")
    jobs.add_argument("id", nargs="?")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(func=_jobs)

    cancel_cmd = subparsers.add_parser("cancel", help="cancel a queued or running learn job")
    cancel_cmd.add_argument("id")
    cancel_cmd.set_defaults(func=_cancel)
