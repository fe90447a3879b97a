"""A real stack for integration tests: `bentoml serve` (2 workers) next to a Celery worker and the
embedded Redis, with helpers to follow what every worker process serves through `/metrics`; and
`janus up` as a user runs it, on a copy of a store (`JanusUp`)."""

from __future__ import annotations

import io
import os
import shutil
import signal
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


def processes_using(marker: str) -> list[int]:
    """Pids of the processes whose environment mentions `marker` (a data dir: `janus up`'s)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@dataclass
class JanusUp:
    """`janus up` in a session of its own, its output in `out`; `stop` is Ctrl-C (SIGINT)."""

    process: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    out: Path

    BANNER_END = "Ctrl-C stops everything"

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def token(self) -> str:
        """The admin token `janus up` printed (`JANUS_ADMIN_TOKEN`, else its data dir's file)."""
        line = next(x for x in self.output().splitlines() if x.startswith("admin token: "))
        return line.removeprefix("admin token: ").strip()

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def wait_banner(self, timeout: float = 200.0) -> str:
        """Blocks until `janus up` printed its banner (the service is ready); returns its output."""
        deadline = time.monotonic() + timeout
        while self.BANNER_END not in self.output():
            if self.process.poll() is not None:
                raise RuntimeError(f"janus up exited:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"janus up not ready after {timeout} s:\n{self.output()[-3000:]}"
                )
            time.sleep(0.5)
        return self.output()

    def stop(self, timeout: float = 90.0) -> int:
        """Ctrl-C; its exit code (SIGKILL to the group, and the timeout raised, if it hangs)."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise


def start_up(store: Path, root: Path, env: dict[str, str] | None = None) -> JanusUp:
    """`janus up` on a fresh data dir under `root` holding a copy of `store` (versions already
    there: no first learn job), on a free port; `env` adds to the `JANUS_*`-free environment."""
    data_dir = root / "janus-up-data"
    shutil.copytree(store, data_dir / "store")
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_")}
    full = {
        **clean,
        "OMP_NUM_THREADS": "1",
        "JANUS_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    out = root / "up.out"
    argv = [sys.executable, "-m", "service.cli", "up", "--data-dir", str(data_dir)]
    with open(out, "wb") as fh:
        process = subprocess.Popen(
            [*argv, "--port", str(port)],
            cwd=REPO,
            env=full,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return JanusUp(process, f"http://127.0.0.1:{port}", data_dir, out)
