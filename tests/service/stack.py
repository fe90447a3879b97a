"""A real stack for integration tests: `bentoml serve` (2 workers) next to a Celery worker and the
embedded Redis, with helpers to follow what every worker process serves through `/metrics`."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.process_group import spawn_group, stop_group

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_versions(text: str) -> dict[str, str]:
    """pid → version from `janus_serving_version` samples with value 1."""
    out: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "janus_serving_version":
            for s in family.samples:
                if s.value == 1:
                    out[s.labels["pid"]] = s.labels["version"]
    return out


@dataclass
class Server:
    """A `bentoml serve service.service:Janus` process group on loopback."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path
    workers: int
    token: str

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def wait_live(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bentoml serve exited:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/livez", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"bentoml serve not live after {timeout} s:\n{self.tail()}")

    def versions(self) -> dict[str, str]:
        return worker_versions(httpx.get(f"{self.url}/metrics", timeout=10).text)

    def wait_all_serving(self, version: str, timeout: float = 120.0, poll: float = 0.1) -> float:
        """Blocks until every worker serves `version`; returns the time.time() it was seen."""
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            seen = self.versions()
            if len(seen) >= self.workers and all(v == version for v in seen.values()):
                return time.time()
            time.sleep(poll)
        raise TimeoutError(f"workers serve {seen}, not all {version}:\n{self.tail()}")

    def wait_job(self, job_id: str, timeout: float = 240.0) -> dict[str, Any]:
        """The job's record from `/admin/jobs/ID` once it ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(f"/admin/jobs/{job_id}", headers=self.admin).json()
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return dict(job)
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} did not end:\n{self.tail()}")

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", timeout=60, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=60, **kwargs)

    def client_put(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """An admin PUT with a JSON body."""
        return httpx.put(f"{self.url}{path}", json=body, headers=self.admin, timeout=60)

    def delete(self, path: str) -> httpx.Response:
        """An admin DELETE."""
        return httpx.delete(f"{self.url}{path}", headers=self.admin, timeout=60)

    def stop(self, timeout: float = 30.0) -> None:
        stop_group(self.process, timeout, linger_s=10.0)


def archive(folder: Path) -> bytes:
    """A class-folder dataset as a tar.gz, as users upload it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return buf.getvalue()


def start_server(env: dict[str, str], log: Path, token: str, workers: int = 2) -> Server:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JANUS_", "BENTOML_"))}
    full = {
        **clean,
        **env,
        "JANUS_ADMIN_TOKEN": token,
        "JANUS_WORKERS": str(workers),
        "JANUS_THREADS": "1",
        "JANUS_POLL_S": "1",
        "JANUS_MAX_BODY_BYTES": str(1 << 20),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "BENTOML_HOME": str(log.parent / "bentoml-home"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    bentoml = Path(sys.executable).parent / "bentoml"
    cmd = [
        str(bentoml),
        "serve",
        "service.service:Janus",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    process = spawn_group(cmd, full, log, REPO)
    return Server(process, f"http://127.0.0.1:{port}", log, workers, token)
