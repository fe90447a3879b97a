"""Names and paths: allowlists for ids, keys and file names, and confinement under the root.

Nothing user-supplied is ever decoded (no URL unquoting, no unicode normalisation): a name is
accepted only if it fully matches an ASCII allowlist, and every store-relative path is built from
components that match a second allowlist and is checked to stay under the store root.
"""

from __future__ import annotations

import os
import re

from adapters_store.errors import InvalidName

VERSION_ID = re.compile(r"v[0-9]{4,9}", re.ASCII)
"""Version ids: `v` and 4 to 9 digits (`v0001`), allocated by the store, monotone."""

KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", re.ASCII)
"""Idempotency keys and job ids: letters, digits and `_.-`, starting alphanumeric."""

FILE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}\.[a-z0-9]{1,16}", re.ASCII)
"""Files inside a version: one lowercase stem and one extension, e.g. `adapter.safetensors`."""

_COMPONENT = re.compile(r"[A-Za-z0-9_.-]{1,200}", re.ASCII)
MANIFEST = "manifest.json"


def _check(pattern: re.Pattern[str], value: object, what: str, example: str) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None or ".." in value:
        raise InvalidName(
            f"invalid {what} {value!r}: expected something like {example!r} "
            f"(pattern {pattern.pattern}); list versions with `janus versions`"
        )
    return value


def check_version_id(value: object) -> str:
    """Returns `value` if it is a well-formed version id, else raises `InvalidName`."""
    return _check(VERSION_ID, value, "version id", "v0001")


def check_key(value: object, what: str = "idempotency key") -> str:
    """Returns `value` if it is a well-formed key (idempotency key, job id)."""
    return _check(KEY, value, what, "job-2024-05-01.task3")


def check_file_name(value: object) -> str:
    """Returns `value` if it is an allowed file name inside a version."""
    name = _check(FILE_NAME, value, "file name", "adapter.safetensors")
    if name == MANIFEST:
        raise InvalidName(f"{MANIFEST!r} is reserved for the store's own manifest")
    return name


def version_number(version_id: str) -> int:
    return int(check_version_id(version_id)[1:])


def format_version_id(number: int) -> str:
    return f"v{number:04d}"


def rel(*parts: str) -> str:
    """Joins store-relative path components after checking each one."""
    for part in parts:
        if _COMPONENT.fullmatch(part) is None or part in {".", ".."}:
            raise InvalidName(f"refusing path component {part!r}")
    return "/".join(parts)


def split_rel(path: str) -> list[str]:
    """Splits and re-checks a store-relative path (as built by `rel`)."""
    parts = path.split("/")
    rel(*parts)
    return parts


def confine_local(root: str, path: str) -> str:
    """Absolute local path of store-relative `path`, refusing anything that leaves `root`.

    `root` must already be a resolved real path. Symlinks inside the store that point outside
    it are refused as well.
    """
    full = os.path.join(root, *split_rel(path))
    real = os.path.realpath(full)
    if real != root and not real.startswith(root + os.sep):
        raise InvalidName(f"path {path!r} resolves outside the store root {root!r}")
    return full


def confine_object(root: str, path: str) -> str:
    """Object-store key of store-relative `path` under `root` (a `bucket/prefix`)."""
    return f"{root}/{'/'.join(split_rel(path))}"
