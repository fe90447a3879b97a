"""`janus up` as a user runs it: the stack comes up, a curl pasted from its output classifies an
image, and Ctrl-C (SIGINT) stops the service, the worker and Redis, leaving no process behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.service.stack import REPO, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def _processes_using(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_up_serves_and_stops_cleanly(version_store: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "janus-up-data"
    shutil.copytree(version_store, data_dir / "store")  # not empty: no first learn job
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_")}
    out = tmp_path / "up.out"
    with open(out, "wb") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service.cli",
                "up",
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
            ],
            cwd=REPO,
            env={**env, "OMP_NUM_THREADS": "1", "JANUS_THREADS": "1", "PYTHONUNBUFFERED": "1"},
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 200
        while "Ctrl-C stops everything" not in out.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, out.read_text()
            time.sleep(0.5)
        text = out.read_text()
        assert f"http://127.0.0.1:{port}" in text
        assert (data_dir / "admin-token").read_text().strip() in text
        curl = next(line.strip() for line in text.splitlines() if "curl -s -F images=@" in line)
        answer = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
        assert '"version":"v0002"' in answer.stdout, answer
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert code == 0, out.read_text()
    time.sleep(1)
    assert _processes_using(str(data_dir)) == []
