"""Who holds a reservation, a key claim or a lock, and whether that process still runs.

A pid means something only inside its pid namespace on its boot of its machine: containers that
share a volume (or one pod's containers, which share a hostname) each number their processes
from 1. So an owner records its *process space* (`process_space`: hostname, boot id and pid
namespace, hashed), and its pid is checked only from the same space; from any other, an owner is
alive until it is older than a maximum age.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import time
from functools import cache
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from adapters_store.manifest import VersionId

_R = TypeVar("_R", bound=BaseModel)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@cache
def process_space() -> str:
    """Where this process's pid means something: hostname, boot id and pid namespace, hashed
    (12 hex digits)."""
    parts = [socket.gethostname()]
    for read, source in (
        (Path.read_text, "/proc/sys/kernel/random/boot_id"),
        (os.readlink, "/proc/self/ns/pid"),
    ):
        try:
            parts.append(str(read(Path(source))))
        except OSError:
            parts.append("")
    return hashlib.sha256("\0".join(p.strip() for p in parts).encode()).hexdigest()[:12]


class Owner(BaseModel):
    """A process that holds something in the store."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    pid: int
    token: str
    started: float
    space: str = ""  # `process_space()`; empty in records of earlier releases

    @classmethod
    def me(cls, token: str | None = None) -> Owner:
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            token=token or secrets.token_hex(8),
            started=time.time(),
            space=process_space(),
        )

    def alive(self, max_age_s: float) -> bool:
        """In this process space: whether the pid runs. Elsewhere (another host, container or
        boot): whether younger than max_age_s. A record without a space is judged by its host."""
        same = self.space == process_space() if self.space else self.host == socket.gethostname()
        if same:
            return pid_alive(self.pid)
        return time.time() - self.started < max_age_s


class Reservation(BaseModel):
    """`ids/<id>`: a version id taken by a publisher; kept forever so ids are never reused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    owner: Owner
    abandoned: bool = False


class KeyClaim(BaseModel):
    """`keys/<key>`: the version published (or being published) under an idempotency key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: VersionId
    owner: Owner


def parse(model: type[_R], raw: bytes) -> _R | None:
    """A record, or None if it is unreadable (a torn write: treated as abandoned)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError:
        return None
