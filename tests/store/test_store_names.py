"""Hostile ids, keys and file names are refused, and nothing outside the store root is touched."""

from __future__ import annotations

import os
import posixpath
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_helpers import draft, files, publish

from adapters_store import StoreError, VersionStore, open_store
from adapters_store.manifest import ADAPTER
from adapters_store.paths import check_file_name, check_key, check_version_id

TRICKS = [
    "..",
    "../",
    "../../etc/passwd",
    "..\\",
    "\\",
    "/",
    "/etc/passwd",
    "C:\\Windows",
    "//host/x",
    "%2e%2e",
    "%2e%2e%2f",
    "%2E%2E/",
    "%252e",
    "..%2f",
    "\x00",
    "v0001\x00",
    "v0001\n",
    " v0001",
    "v0001/",
    "~root",
    "$HOME",
    "\u2024\u2024/",
    "\uff0e\uff0e\uff0f",
    "\u202ev0001",
    "v\u0660001",
    "\u0131d",
    "ｖ0001",
    "v0001\u200b",
    "\ud800",
    "a/../b",
    "a\\..\\b",
    "adapter.safetensors/..",
]
hostile = st.builds(
    lambda head, trick, tail: head + trick + tail,
    st.sampled_from(["", "v0001", "key", "adapter."]),
    st.sampled_from(TRICKS),
    st.sampled_from(["", "x", "v0001", ".safetensors"]) | st.text(max_size=4),
)
CHECKS: list[Callable[[object], str]] = [check_version_id, check_key, check_file_name]


@given(name=hostile)
def test_validators_refuse_path_tricks(name: str) -> None:
    for check in CHECKS:
        with pytest.raises(StoreError):
            check(name)


@given(name=st.text(max_size=12) | st.binary(max_size=12).map(lambda b: b.decode("latin-1")))
def test_whatever_a_validator_accepts_is_one_plain_component(name: str) -> None:
    for check in CHECKS:
        try:
            check(name)
        except StoreError:
            continue
        assert name.isascii() and name.isprintable()
        assert not set(name) & set("/\\%\x00~$ ") and ".." not in name
        assert posixpath.normpath(posixpath.join("/root", name)) == f"/root/{name}"


# -- the whole API, on every backend, with I/O recorded ----------------------------------------

_opened: list[str] | None = None


_EVENTS = {
    "open",
    "os.listdir",
    "os.scandir",
    "os.remove",
    "os.rename",
    "os.mkdir",
    "os.rmdir",
    "os.link",
}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _opened is None or event not in _EVENTS or not args:
        return
    if isinstance(args[0], str | bytes | os.PathLike):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


class _RecordingFS:
    """Wraps an fsspec filesystem and records every path it is asked about."""

    def __init__(self, fs: Any, log: list[str]) -> None:
        self._fs, self._log = fs, log

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._fs, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._log.extend(a for a in args if isinstance(a, str))
            return attr(*args, **kwargs)

        return call


@pytest.fixture
def recorded(store_uri: str, tmp_path: Path) -> Iterator[tuple[VersionStore, list[str], str]]:
    """A store with one version, and the list of paths its I/O touches from now on."""
    global _opened
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("do not read")
    store = open_store(store_uri)
    publish(store, activate=True)
    backend: Any = store._backend
    log: list[str] = []
    if backend.local:
        _opened = log
    else:
        backend.fs = _RecordingFS(backend.fs, log)
    try:
        yield store, log, backend.root
    finally:
        _opened = None


def _calls(store: VersionStore, name: str) -> list[Callable[[], object]]:
    return [
        lambda: store.get(name),
        lambda: store.lineage(name),
        lambda: store.read_bytes(name, ADAPTER),
        lambda: store.read_tensors("v0001", name),
        lambda: store.read_bytes("v0001", name),
        lambda: store.activate(name),
        lambda: store.rollback(to=name),
        lambda: store.find_by_key(name),
        lambda: store.publish({name: b"x"}, draft()),
        lambda: store.publish(files(), draft(idempotency_key=name)),
        lambda: store.publish(files(), draft(parent=name)),
        lambda: store.publish(files(), draft(job_id=name)),
    ]


def _is_import(path: str) -> bool:  # the interpreter may import lazily while we record
    return (
        path.endswith((".py", ".pyc", ".so"))
        or "site-packages" in path
        or path.startswith(sys.base_prefix)
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=hostile)
def test_api_refuses_hostile_names_without_touching_anything_outside(
    recorded: tuple[VersionStore, list[str], str], name: str
) -> None:
    store, log, root = recorded
    log.clear()
    for call in _calls(store, name):
        with pytest.raises(StoreError):
            call()
    touched = [p for p in log if not _is_import(p)]
    assert all(p == root or p.startswith(root + "/") for p in touched), touched
    assert store.serving() == "v0001" and store.version_ids() == ["v0001"]
    assert [p for p in log if not _is_import(p)], "the recorder sees legitimate I/O"


def test_symlink_out_of_the_store_is_refused(tmp_path: Path) -> None:
    global _opened
    store = open_store(tmp_path / "store")
    publish(store)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "manifest.json").write_text("{}")
    os.symlink(outside, tmp_path / "store" / "versions" / "v0002")
    log: list[str] = []
    _opened = log
    try:
        assert store.version_ids() == ["v0001"]  # not listed
        with pytest.raises(StoreError, match="outside the store root"):
            store.get("v0002")
    finally:
        _opened = None
    assert not [p for p in log if p.startswith(str(outside))]
