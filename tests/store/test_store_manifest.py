"""Manifests: canonical JSON with a self-digest, so any changed byte is caught."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from store_helpers import draft

from adapters_store import IntegrityError, ManifestDraft, StoreError
from adapters_store.audit import AuditEntry, decode_log
from adapters_store.manifest import FileEntry, Manifest, decode_manifest, encode_manifest


def _manifest() -> Manifest:
    files = {"adapter.safetensors": FileEntry(sha256="12" * 32, size=96)}
    fields = draft(classes=["cat", "dog", "éclair"], new_classes=["éclair"])
    return Manifest.build(ManifestDraft.model_validate(fields), "v0007", datetime.now(UTC), files)


MANIFEST = _manifest()
RAW = encode_manifest(MANIFEST)


def test_round_trip_is_byte_exact() -> None:
    assert decode_manifest(RAW, "v0007") == MANIFEST
    assert encode_manifest(decode_manifest(RAW, "v0007")) == RAW
    assert RAW.isascii() and RAW.endswith(b"}\n")


@settings(max_examples=300)
@given(position=st.integers(0, len(RAW) - 1), flip=st.integers(1, 255))
def test_any_changed_byte_is_an_integrity_error(position: int, flip: int) -> None:
    data = bytearray(RAW)
    data[position] ^= flip
    with pytest.raises(IntegrityError) as caught:
        decode_manifest(bytes(data), "v0007")
    assert caught.value.file == "manifest.json" and caught.value.version == "v0007"


def test_a_manifest_moved_to_another_id_is_caught() -> None:
    with pytest.raises(IntegrityError, match="v0008"):
        decode_manifest(RAW, "v0008")


def test_a_newer_schema_asks_for_an_upgrade() -> None:
    newer = RAW.replace(b'"schema_version": 1', b'"schema_version": 2')
    with pytest.raises(StoreError, match="upgrade"):
        decode_manifest(newer, "v0007")


def test_audit_log_ignores_a_torn_last_line_only() -> None:
    entry = AuditEntry(
        time=datetime.now(UTC), action="activate", actor="a", reason="r", from_=None, to="v0001"
    )
    assert decode_log(entry.to_line() * 2 + b'{"time": "20') == [entry, entry]
    with pytest.raises(IntegrityError, match="line 2"):
        decode_log(entry.to_line() + b"garbage\n" + entry.to_line())


def test_importing_the_store_does_not_import_torch() -> None:
    code = (
        "import sys, adapters_store.cli; sys.exit('torch' in sys.modules or 'timm' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_headline_accuracy_falls_back_to_the_learn_jobs_holdout_figure() -> None:
    files = {"adapter.safetensors": FileEntry(sha256="12" * 32, size=96)}
    fields = draft(metrics={"holdout_accuracy_new": 93.75, "loss": 0.1})
    m = Manifest.build(ManifestDraft.model_validate(fields), "v0008", datetime.now(UTC), files)
    assert m.accuracy == 93.75
    assert MANIFEST.accuracy == 0.875  # an explicit `accuracy` wins
