"""Typed errors of the version store.

Every message says what to do next: which version, which file, which command.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class InvalidName(StoreError, ValueError):
    """A version id, idempotency key, file name or other name failed validation."""


class InvalidManifest(StoreError, ValueError):
    """Manifest fields given to `publish` are inconsistent or incomplete."""


class NotFound(StoreError, LookupError):
    """A version (or the store itself) does not exist."""


class StoreNotFound(NotFound):
    """No store at the given URI."""


class IntegrityError(StoreError):
    """A stored file does not match its manifest (or cannot be decoded).

    Attributes:
        version: The version id, or None for a store-level file.
        file: The file name inside the version (or the store-relative path).
    """

    def __init__(self, version: str | None, file: str, detail: str) -> None:
        self.version = version
        self.file = file
        self.detail = detail
        where = f"{file} of version {version}" if version else file
        super().__init__(
            f"integrity error in {where}: {detail}. The stored copy is corrupt; "
            "run `janus verify` to list every damaged file, and serve another version "
            "(`janus rollback`) or republish this one."
        )


class NothingToRollBack(StoreError):
    """The audit log names no earlier serving version."""


class Quarantined(StoreError):
    """A version that failed to load is set aside; serving it needs `--force`."""


class Rejected(StoreError):
    """The promotion gate rejected a version; serving it needs `--force` and a reason."""


class StoreBusy(StoreError):
    """Another live process holds a lock or an idempotency key for too long."""
