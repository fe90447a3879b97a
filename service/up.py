"""`janus up`: the whole stack on one machine, for a first run.

Starts the embedded Redis, a Celery worker (`janus worker`) and `bentoml serve` with the data dir's
store; on an empty store it learns a first version from `examples/fashion-mnist/task1` (staged
in the store, EfficientNet-Lite0 at 64 px, 2 epochs) so the API answers at once; prints the URL,
the admin token and curl commands; Ctrl-C stops the service, the worker and Redis, in that order.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from adapters_store import open_store
from learner.jobs.settings import JobSettings
from service import client
from service.process_group import spawn_group, stop_group

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
FIRST_TASK = EXAMPLES / "fashion-mnist" / "task1"
GOLDEN = EXAMPLES / "fashion-mnist" / "golden"
"""Test-split images of the six example classes: the golden evaluation set of a new store."""
FIRST_KEY = "janus-up-first-task"


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to its process group, SIGKILL after `timeout`."""
        stop_group(self.process, timeout)


def _spawn(name: str, argv: list[str], env: dict[str, str], logs: Path) -> Child:
    log = logs / f"{name}.log"
    return Child(name, spawn_group(argv, env, log, REPO), log)


def admin_token(data_dir: Path) -> str:
    """`$JANUS_ADMIN_TOKEN`, else the data dir's `admin-token` (created once, mode 0600)."""
    if token := client.admin_token():
        return token
    path = data_dir / "admin-token"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


def _wait_ready(url: str, children: list[Child], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited; see {child.log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the service was not ready after {timeout:.0f} s; see the logs")


def _learn_first(settings: JobSettings, redis_url: str) -> None:
    from learner.config import BackboneConfig
    from learner.jobs.app import create_app
    from learner.jobs.cli import ProgressBar
    from learner.jobs.client import LearnRequest, submit, wait
    from learner.jobs.intake import stage_dataset

    app = create_app(settings, redis_url)
    request = LearnRequest(
        dataset=stage_dataset(FIRST_TASK, settings.store_uri),
        parent="root",
        backbone=BackboneConfig(input_size=64),
        train={"epochs": 2},
        idempotency_key=FIRST_KEY,
        reason="janus up: first task from examples/fashion-mnist/task1",
    )
    print("janus: empty store; learning a first version from examples/ (a minute or two)")
    final = wait(app, submit(app, request), on_update=ProgressBar(sys.stderr.isatty()))
    app.close()
    if final.state != "succeeded":
        raise RuntimeError(f"the first learn job {final.state}: {final.error}")
    print(f"janus: learned {final.version}")
    from learner.jobs.evaluation import golden_set

    info = golden_set(
        open_store(settings.store_uri),
        GOLDEN,
        max_bytes=settings.max_dataset_bytes,
        max_images=1000,
    )
    print(f"janus: attached {GOLDEN} as a golden evaluation set ({info.images} images)")


def init_store(settings: JobSettings, redis_url: str | None) -> int:
    """`janus init`: the first version of an empty store, learned by whichever `janus worker`
    takes the job (the first task of `examples/`, with the golden set attached), so a fresh
    deployment serves; a store with versions is left as it is. Returns the exit code."""
    versions = open_store(settings.store_uri).versions()
    if versions:
        print(f"janus: {settings.store_uri} has {len(versions)} versions; nothing to do")
        return 0
    if redis_url is None:
        raise RuntimeError(
            "no Redis: set JANUS_REDIS_URL to the Redis of the learn workers (`janus init` "
            "queues the first job for one of them)"
        )
    _learn_first(settings, redis_url)
    return 0


def _banner(url: str, token: str, data_dir: Path) -> str:
    image = EXAMPLES / "images" / "sneaker.png"
    task2 = EXAMPLES / "fashion-mnist"
    return f"""
janus is up: {url}   (data in {data_dir}, logs in {data_dir / "logs"})
admin token: {token}

  # classify an image (top 3 labels, and the version that answered)
  curl -s -F images=@{image} '{url}/classify?top_k=3'
  # the same with base64 JSON
  IMG=$(base64 -w0 {image})
  curl -s -H 'Content-Type: application/json' -d "{{\\"images\\": [\\"$IMG\\"]}}" {url}/classify
  # versions, and learning two new classes from an uploaded archive
  curl -s -H 'Authorization: Bearer {token}' {url}/admin/versions
  tar czf /tmp/task2.tgz -C {task2} task2
  curl -s -H 'Authorization: Bearer {token}' -F dataset=@/tmp/task2.tgz {url}/admin/learn
  curl -s -H 'Authorization: Bearer {token}' -X POST {url}/admin/rollback
  # API docs: {url}/api/docs    metrics: {url}/metrics    readiness: {url}/readyz
  # web console (log in with the admin token): {url}/console

Ctrl-C stops everything.
"""


def run_up(data_dir: Path, port: int, host: str = "127.0.0.1", workers: int = 2) -> int:
    """Runs the stack until Ctrl-C (or SIGTERM); returns the exit code."""
    from learner.jobs.app import resolve_redis

    data_dir = data_dir.expanduser().resolve()
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if k != "JANUS_REDIS_URL"}
    settings = JobSettings.from_env({**base, "JANUS_DATA_DIR": str(data_dir)})
    redis_url, server = resolve_redis(settings)
    token = admin_token(data_dir)
    env = {
        **base,
        "JANUS_DATA_DIR": str(data_dir),
        "JANUS_REDIS_URL": redis_url,
        "JANUS_ADMIN_TOKEN": token,
        "JANUS_WORKERS": str(workers),
        "JANUS_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    url = f"http://{host}:{port}"
    bentoml = str(Path(sys.executable).parent / "bentoml")
    children: list[Child] = []

    def _term(*_: object) -> None:
        raise KeyboardInterrupt

    # explicit handlers: a shell starts background jobs with SIGINT ignored
    previous = {sig: signal.signal(sig, _term) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        children.append(
            _spawn("worker", [sys.executable, "-m", "service.cli", "worker"], env, logs)
        )
        serve = [bentoml, "serve", "service.service:Janus", "--host", host, "--port", str(port)]
        children.append(_spawn("service", serve, env, logs))
        store = open_store(settings.store_uri)
        if not store.versions():
            _learn_first(settings, redis_url)
        elif store.serving() is None:
            print(
                "janus: the store has versions but none serves; the service becomes ready after "
                "`janus activate ID` (see `janus versions`)",
                file=sys.stderr,
            )
        _wait_ready(url, children, timeout=600 if store.serving() else 24 * 3600)
        print(_banner(url, token, data_dir), flush=True)
        while all(c.alive() for c in children):
            time.sleep(0.5)
        dead = [c for c in children if not c.alive()]
        print(f"janus: {dead[0].name} exited; see {dead[0].log}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\njanus: stopping the service, the worker and Redis", file=sys.stderr)
        return 0
    finally:
        for child in reversed(children):
            child.stop()
        if server is not None:
            server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
