"""Stopping the process groups that integration tests start (a worker, `bentoml serve`)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def stop_group(
    process: subprocess.Popen[bytes], timeout: float = 30.0, linger_s: float = 10.0
) -> None:
    """SIGTERM the group, SIGKILL it after `timeout`; wait until no member is left.

    Children (a Celery pool child, BentoML workers) may outlive their parent for a moment, so the
    group is polled for up to `linger_s` before it is killed outright.
    """
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    deadline = time.monotonic() + linger_s
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)


def spawn_group(
    cmd: list[str], env: dict[str, str], log: Path, cwd: Path
) -> subprocess.Popen[bytes]:
    """Start `cmd` in a session of its own, so `stop_group` reaches its children."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
