"""deploy/probe.py (`janus-probe`, the images' health checks): the HTTP check against a real
server, and the worker check against a real `janus worker` and Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from learner.jobs.redis_embedded import EmbeddedRedis
from tests.deploy.manifests import DEPLOY
from tests.jobs.conftest import running_worker


def probe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_")}
    return subprocess.run(
        [sys.executable, str(DEPLOY / "probe.py"), *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


class _Livez(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/livez" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Livez)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_http_passes_on_200_only(server: str) -> None:
    assert probe("http", f"{server}/livez").returncode == 0
    down = probe("http", f"{server}/readyz")
    assert down.returncode == 1 and "answered 503" in down.stderr


def test_http_fails_in_one_line_when_nothing_listens() -> None:
    done = probe("http", "http://127.0.0.1:9/livez", "--timeout", "2")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("janus-probe: ")


def test_worker_needs_a_redis_url() -> None:
    done = probe("worker")
    assert done.returncode == 1 and "JANUS_REDIS_URL" in done.stderr


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_worker_passes_while_this_hosts_worker_answers(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    env = {"JANUS_REDIS_URL": redis_server.url}
    with running_worker(tmp_path, redis_server.url, "deploy-probe"):
        assert probe("worker", env=env).returncode == 0
        other = probe("worker", "--host", "elsewhere.invalid", "--timeout", "2", env=env)
        assert other.returncode == 1 and "elsewhere.invalid" in other.stderr
    gone = probe("worker", "--timeout", "2", env=env)
    assert gone.returncode == 1 and "no janus worker" in gone.stderr
