"""Who holds a reservation, a key claim or a lock, and whether that process still runs."""

from __future__ import annotations

import os
import secrets
import socket
import time
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


class Owner(BaseModel):
    """A process that holds something in the store."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    pid: int
    token: str
    started: float

    @classmethod
    def me(cls, token: str | None = None) -> Owner:
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            token=token or secrets.token_hex(8),
            started=time.time(),
        )

    def alive(self, max_age_s: float) -> bool:
        """On this host: whether the pid runs. On another host: whether younger than max_age_s."""
        if self.host == socket.gethostname():
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
