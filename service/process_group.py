"""Child processes in a session of their own, stopped as a group (`janus up`, integration tests).

A Celery worker's pool child and BentoML's workers may outlive their parent for a moment; starting
each child in its own session lets a stop reach all of them through the process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def spawn_group(
    argv: list[str], env: dict[str, str], log: Path, cwd: Path
) -> subprocess.Popen[bytes]:
    """Start `argv` in a session of its own, stdout and stderr appended to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
        )


def stop_group(
    process: subprocess.Popen[bytes], timeout: float = 30.0, linger_s: float = 0.0
) -> None:
    """SIGTERM the group, SIGKILL it after `timeout`; then SIGKILL what is left of it.

    Members still alive are given up to `linger_s` to exit on their own before that last SIGKILL.
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    deadline = time.monotonic() + linger_s
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group
