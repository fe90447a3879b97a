"""Crash injection for tests: `JANUS_STORE_CRASH_AT=<point>` SIGKILLs the process at that point."""

from __future__ import annotations

import os
import signal

CRASH_POINTS = ("after_tensors", "after_manifest", "before_rename", "before_pointer")
ENV = "JANUS_STORE_CRASH_AT"


def crash_point(name: str) -> None:
    """Kills this process with SIGKILL if the environment asks for a crash at `name`."""
    assert name in CRASH_POINTS, name
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
