"""`janus worker | learn | jobs | cancel`: run learn jobs and follow them.

Without `JANUS_REDIS_URL` every command uses the embedded Redis of the data dir (starting it if
none runs; the process that started it stops it on exit, and queued jobs persist on disk). A Redis
that does not answer ends a command with one line that names it (never its password) and exit 1.

Jobs are printed by `print_job`, `print_jobs`, `print_learned` and `print_cancelled`, which take
`JobStatus` models: the local commands and their `--url` twins in `service.remote` share them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from adapters_store.cli import (
    add_command,
    json_option,
    print_fields,
    print_json,
    print_table,
    shorten,
    wants_json,
)
from learner.config import TrainConfig
from learner.device import DEVICE_PATTERN
from learner.jobs.app import create_app, resolve_redis
from learner.jobs.client import JobStatus, LearnRequest, cancel, list_jobs, status, submit, wait
from learner.jobs.intake import STAGED, stage_dataset, under_roots
from learner.jobs.redis_embedded import RedisUnavailable
from learner.jobs.redis_url import redacted
from learner.jobs.settings import JobSettings
from learner.methods import list_methods

Handler = Callable[[argparse.Namespace], int]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_setting(item: str) -> tuple[str, Any]:
    """`key=value` → (key, JSON value or the plain string), for `--set`."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--set takes key=value (a TrainConfig field), got {item!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """Every `--set KEY=VALUE` as a dict (a later KEY wins)."""
    return dict(parse_setting(item) for item in items)


# --- what the commands print (shared with `service.remote`) -----------------------------------


def _when(submitted_at: str | None) -> str:
    if not submitted_at:
        return "-"
    try:
        return datetime.fromisoformat(submitted_at).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return submitted_at


def _progress(job: JobStatus) -> str:
    p = job.progress or {}
    epoch = f"{p.get('epoch', '-')}/{p.get('epochs', '-')}"
    return f"{p.get('phase')} epoch {epoch} step {p.get('step', '-')}/{p.get('steps', '-')}"


def print_job(job: JobStatus, *, as_json: bool) -> None:
    """`janus jobs ID`: one job's state, with its version, error or progress."""
    if as_json:
        print_json(job.model_dump(mode="json"))
        return
    fields = [
        ("job", job.job_id),
        ("state", job.state),
        ("submitted", _when(job.submitted_at)),
        ("dataset", job.dataset or "-"),
    ]
    if job.version:
        fields.append(("version", job.version))
    if job.result and job.result.get("evaluation"):
        e, served = job.result["evaluation"], job.result.get("activated")
        if job.rejected:
            verdict = f"rejected, not serving: {job.rejected}"
        else:
            verdict = "passed" if e.get("passed") else "not applied"
            verdict += ", serving" if served else ", not serving"
        fields.append(("gate", verdict))
    if job.error:
        fields.append(("error", job.error.strip().replace("\n", " | ")))
    if job.progress:
        fields.append(("progress", _progress(job)))
    print_fields(fields)


def print_jobs(jobs: Sequence[JobStatus], *, as_json: bool) -> None:
    """`janus jobs`: the most recent jobs, newest first."""
    if as_json:
        print_json([job.model_dump(mode="json") for job in jobs])
        return
    if not jobs:
        print("no learn jobs yet; queue one with `janus learn PATH`")
        return
    rows = [["JOB", "STATE", "SUBMITTED", "VERSION / PROGRESS / ERROR"]]
    for job in jobs:
        outcome = job.version or (_progress(job) if job.progress else shorten(job.error or "-", 60))
        if job.version and job.rejected:
            outcome += " (rejected by the gate)"
        rows.append([job.job_id, job.state, _when(job.submitted_at), outcome])
    print_table(rows)


def print_learned(job: JobStatus, *, as_json: bool) -> int:
    """`janus learn`: the id of a queued job, or the finished job; 1 if it did not succeed.

    `--json` prints one line, `{"job_id", "state", "version", "error", "rejected"}`, in both
    cases.
    """
    if as_json:
        print(json.dumps(job.summary()))
    elif job.final:
        print_job(job, as_json=False)
    else:
        print(job.job_id)
    return 1 if job.state in ("failed", "cancelled") else 0


def print_cancelled(job: JobStatus, *, as_json: bool) -> int:
    """`janus cancel`: `job` is its state when asked; 1 if it had already ended."""
    if job.final:
        print(f"janus: error: job {job.job_id} already {job.state}", file=sys.stderr)
        return 1
    if as_json:
        print_json(job.model_dump(mode="json"))
    else:
        print(f"cancel requested for {job.job_id} ({job.state}); it stops at its next step")
    return 0


class ProgressBar:
    """A tqdm bar over training steps, with the phase in its description: `wait`'s `on_update`."""

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


# --- the commands -----------------------------------------------------------------------------


def _app(settings: JobSettings) -> Celery:
    url, _server = resolve_redis(settings)
    return create_app(settings, url)


def _redis_guard(handler: Handler) -> Handler:
    """Runs a command; a Redis that does not answer or start becomes one line and exit 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (redis.RedisError, OperationalError) as err:
            print(f"janus: error: {_unreachable(err)}", file=sys.stderr)
            return 1
        except RedisUnavailable as err:  # no embedded Redis could be started
            print(f"janus: error: {' '.join(str(err).split())}", file=sys.stderr)
            return 1

    return run


def _unreachable(err: Exception) -> str:
    why = " ".join(str(err).split()) or type(err).__name__
    settings = JobSettings.from_env()
    if settings.redis_url:
        url = redacted(settings.redis_url)  # no password (the user's, a Sentinel's)
        return (
            f"cannot reach Redis at {url} ({why}); start "
            "Redis there, or fix JANUS_REDIS_URL (unset, `janus up` and `janus worker` run an "
            "embedded Redis in the data dir)"
        )
    return (
        f"cannot reach the embedded Redis of {settings.data_dir} ({why}); start it again with "
        "`janus up` or `janus worker`, or set JANUS_REDIS_URL"
    )


def _worker(args: argparse.Namespace) -> int:
    settings = JobSettings.from_env()
    if args.device is not None:
        settings = settings.model_copy(update={"device": args.device})
    if args.loader_workers is not None:
        settings = settings.model_copy(update={"loader_workers": args.loader_workers})
    problem = _device_problem(settings.device)
    if problem:
        print(f"janus: error: {problem}", file=sys.stderr)
        return 1
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


def _device_problem(spec: str) -> str | None:
    """Why the worker cannot train on `spec` (`learner.device.resolve_device`'s one line), or
    None. CUDA is probed in a child process: the worker's own process never imports torch, so
    nothing CUDA exists before its pool forks."""
    if not spec.startswith("cuda"):
        return None  # cpu and auto always resolve
    probe = "import sys; from learner.device import resolve_device as r; r(sys.argv[1])"
    done = subprocess.run(
        [sys.executable, "-c", probe, spec], capture_output=True, text=True, timeout=300
    )
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines()
    return lines[-1].removeprefix("learner.device.DeviceError: ") if lines else "cannot probe"


def _dataset_ref(path: str, settings: JobSettings) -> str:
    """A reference the worker may read: the path if under an allowed root, else staged."""
    if STAGED.fullmatch(path):
        return path
    real = Path(os.path.realpath(path))
    if not real.exists():
        raise FileNotFoundError(
            f"{path}: no such file or folder; pass a class-folder tree, a zip/tar archive, "
            "an .npz, or datasets/<sha256>"
        )
    if under_roots(real, settings.allowed_roots):
        return str(real)
    ref = stage_dataset(real, settings.store_uri)
    print(f"janus: staged {path} in the store as {ref}", file=sys.stderr)
    return ref


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields `learn` overrides: `--set KEY=VALUE`s and `--epochs`."""
    train = parse_settings(args.set)
    if args.epochs:
        train["epochs"] = args.epochs
    return train


def promotion_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The LearnRequest fields of `learn`'s activation and gate options."""
    fields = {
        "activation": args.activation,
        "gate_accuracy": args.gate_accuracy,
        "gate_max_old_drop": args.gate_max_old_drop,
        "gate_max_forgetting": args.gate_max_forgetting,
    }
    if args.eval_per_class is not None:
        fields["eval_per_class"] = args.eval_per_class
    return fields


def _learn(args: argparse.Namespace) -> int:
    settings = JobSettings.from_env()
    request = LearnRequest(
        dataset=_dataset_ref(args.path, settings),  # a missing path fails before Redis starts
        parent=args.parent,
        method=args.method,
        train=train_overrides(args),
        idempotency_key=args.key,
        reason=args.reason,
        **promotion_fields(args),
    )
    app = _app(settings)
    job_id = submit(app, request)
    if not args.wait:
        queued = JobStatus(job_id=job_id, state="queued", dataset=request.dataset)
        return print_learned(queued, as_json=args.json)
    if not app.control.ping(timeout=1.0):
        print("janus: no worker answers; start one with `janus worker`", file=sys.stderr)
    final = wait(app, job_id, on_update=ProgressBar(not args.json or sys.stderr.isatty()))
    return print_learned(final, as_json=args.json)


def _jobs(args: argparse.Namespace) -> int:
    app = _app(JobSettings.from_env())
    if args.id:
        job = status(app, args.id)
        if job.state == "unknown":
            print(f"janus: error: no job {args.id}; list jobs with `janus jobs`", file=sys.stderr)
            return 1
        print_job(job, as_json=args.json)
        return 0
    print_jobs(list_jobs(app, args.limit), as_json=args.json)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    app = _app(JobSettings.from_env())
    return print_cancelled(cancel(app, args.id), as_json=args.json)


def _gc(args: argparse.Namespace) -> int:
    from learner.jobs.intake import gc_datasets

    settings = JobSettings.from_env()
    removed = gc_datasets(settings.store_uri, args.older_than_days * 86400, dry_run=args.dry_run)
    if wants_json(args):
        print_json(removed)
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for path in removed:
        print(f"{verb} {path}")
    if not removed:
        print(
            f"no staged datasets older than {args.older_than_days:g} days in {settings.store_uri}"
        )
    return 0


def _count(text: str) -> int:
    if not text.isdigit() or int(text) > 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of processes from 0 to 64")
    return int(text)


def _device_spec(text: str) -> str:
    if not re.fullmatch(DEVICE_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r} is not one of auto, cpu, cuda, cuda:N")
    return text


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds the job commands to the `janus` parser."""
    worker = add_command(subparsers, "worker", "run a Celery worker for learn jobs")
    worker.add_argument(
        "--pool",
        choices=["prefork", "solo"],
        default="prefork",
        help="prefork: each job in a child process (the hard time limit can kill it); "
        "solo: in the worker itself",
    )
    worker.add_argument("--concurrency", type=int, default=1, help="training jobs at once")
    worker.add_argument(
        "--device",
        type=_device_spec,
        default=None,
        help="where jobs train: auto (CUDA if there is one), cpu, cuda or cuda:N (default: "
        "$JANUS_DEVICE, else auto); a CUDA device the machine lacks stops the worker at start",
    )
    worker.add_argument(
        "--loader-workers",
        type=_count,
        default=None,
        help="processes that decode a job's images while it trains (default: "
        "$JANUS_LOADER_WORKERS, else half the cores, 1 to 8)",
    )
    worker.add_argument(
        "--loglevel",
        type=str.upper,
        choices=LOG_LEVELS,
        default="INFO",
        metavar="LEVEL",
        help=f"Celery's log level: {', '.join(LOG_LEVELS)}",
    )
    worker.set_defaults(func=_redis_guard(_worker))

    gc = add_command(subparsers, "gc", "remove staged datasets past a retention age")
    gc.add_argument(
        "--older-than-days",
        type=float,
        default=7.0,
        metavar="DAYS",
        help="remove staged datasets last written more than this long ago (default 7, the "
        "lifetime of job records)",
    )
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed")
    json_option(gc, "print the removed paths as JSON")
    gc.set_defaults(func=_gc)

    learn = add_command(subparsers, "learn", "queue a learn job for a labeled batch")
    learn.add_argument(
        "path",
        help="class-folder tree, zip/tar archive or .npz (copied into the store unless under "
        "$JANUS_DATASET_ROOTS), or datasets/<sha256> (already staged)",
    )
    learn.add_argument("--parent", default="serving", help="version id, 'serving' or 'root'")
    learn.add_argument(
        "--method",
        choices=list_methods(),
        default="janus",
        metavar="METHOD",
        help=f"continual-learning method, one of: {', '.join(list_methods())}",
    )
    learn.add_argument(
        "--key",
        default=None,
        help="idempotency key: a repeated job with it publishes once (default: one per job)",
    )
    defaults = LearnRequest.model_fields
    learn.add_argument(
        "--activation",
        choices=["gate", "manual", "auto"],
        default=defaults["activation"].default,
        help="gate: serve the new version if it passes the promotion gate (else it is published "
        "as rejected); manual: serve nothing (still rejected if it fails the gate); auto: serve "
        "it, no gate",
    )
    learn.add_argument(
        "--gate-accuracy",
        type=float,
        default=defaults["gate_accuracy"].default,
        metavar="PERCENT",
        help="gate: held-out accuracy (%%) on the new classes needed",
    )
    learn.add_argument(
        "--gate-max-old-drop",
        type=float,
        default=defaults["gate_max_old_drop"].default,
        metavar="POINTS",
        help="gate: old-class accuracy it may lose against the serving version",
    )
    learn.add_argument(
        "--gate-max-forgetting",
        type=float,
        default=defaults["gate_max_forgetting"].default,
        metavar="POINTS",
        help="gate: old-class accuracy it may lose choosing among the old classes only",
    )
    learn.add_argument(
        "--eval-per-class",
        type=int,
        default=None,
        metavar="N",
        help="held-out images per new class kept as an evaluation set (0: none; default: "
        "$JANUS_EVAL_PER_CLASS of the worker)",
    )
    learn.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs of training (default: {TrainConfig.model_fields['epochs'].default}, "
        "TrainConfig's)",
    )
    fields = ", ".join(f for f in TrainConfig.model_fields if f != "method")
    learn.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a training setting (learner.config.TrainConfig; repeatable), e.g. "
        f"--set lr=2e-4; fields: {fields}",
    )
    learn.add_argument("--reason", default="", help="why, recorded in the audit log")
    learn.add_argument("--wait", action="store_true", help="follow the job until it ends")
    learn.add_argument(
        "--json",
        action="store_true",
        help='print one JSON line: {"job_id", "state", "version", "error"}',
    )
    learn.set_defaults(func=_redis_guard(_learn))

    jobs = add_command(subparsers, "jobs", "list learn jobs, or show one")
    jobs.add_argument("id", nargs="?", help="a job id: show this job (default: list jobs)")
    jobs.add_argument("--limit", type=int, default=20, help="most recent jobs to list")
    jobs.add_argument("--json", action="store_true", help="print JSON")
    jobs.set_defaults(func=_redis_guard(_jobs))

    cancel_cmd = add_command(subparsers, "cancel", "cancel a queued or running learn job")
    cancel_cmd.add_argument("id", help="job id, as `janus learn` printed it")
    cancel_cmd.add_argument("--json", action="store_true", help="print the job's state as JSON")
    cancel_cmd.set_defaults(func=_redis_guard(_cancel))
