"""Safe promotion in the store, on every backend: evaluations in manifests, the gate's rejections
in the serving log, aliases, the shadow ref and evaluation sets."""

from __future__ import annotations

import hashlib
import json

import pytest
from store_helpers import publish, raw_fs

from adapters_store import (
    IntegrityError,
    InvalidManifest,
    InvalidName,
    NotFound,
    Rejected,
    open_store,
    verify_store,
)
from adapters_store.manifest import MANIFEST, decode_manifest, encode_manifest

GATE_FAILED = {
    "against": "v0001",
    "new_accuracy": 90.0,
    "old_accuracy": 60.0,
    "old_accuracy_serving": 95.0,
    "per_class": {
        "cat": {"images": 20, "accuracy": 60.0, "serving_accuracy": 95.0},
        "owl": {"images": 20, "accuracy": 90.0},
    },
    "gate": {
        "passed": False,
        "reasons": ["old-class accuracy fell 35.0 points"],
        "min_new_accuracy": 50.0,
        "max_old_drop": 5.0,
    },
}


def test_a_manifest_without_an_evaluation_keeps_its_bytes(store_uri: str) -> None:
    store = open_store(store_uri)
    m = publish(store)
    raw = store._backend.read(f"versions/{m.id}/{MANIFEST}")
    assert b"evaluation" not in raw  # written as before the field existed: old digests hold
    assert decode_manifest(raw, m.id) == m and m.evaluation is None and m.rejected is None
    with_eval = publish(
        store, 1, evaluation=GATE_FAILED, classes=["cat", "owl"], new_classes=["owl"]
    )
    assert with_eval.evaluation and with_eval.evaluation.old_drop == pytest.approx(35.0)
    assert with_eval.evaluation.per_class["cat"].change == pytest.approx(-35.0)
    assert with_eval.rejected == "old-class accuracy fell 35.0 points"
    assert decode_manifest(encode_manifest(with_eval), with_eval.id) == with_eval


def test_a_rejected_version_serves_only_when_forced_with_a_reason(store_uri: str) -> None:
    store = open_store(store_uri)
    v1 = publish(store, activate=True)
    bad = publish(
        store, 1, parent=v1.id, evaluation=GATE_FAILED, classes=["cat", "owl"], new_classes=["owl"]
    )
    store.record_rejection(bad.id, actor="job", reason="learn job 7: old classes fell")
    store.record_rejection(bad.id, actor="job", reason="again")  # a retried job: once
    rejections = [e for e in store.history() if e.action == "reject"]
    assert [(e.to, e.from_) for e in rejections] == [(bad.id, v1.id)]
    assert store.serving() == v1.id and verify_store(store).ok  # the pointer did not move
    with pytest.raises(Rejected, match="rejected by the promotion gate"):
        store.activate(bad.id, actor="me")
    with pytest.raises(InvalidManifest, match="needs a reason"):
        store.activate(bad.id, actor="me", force=True)
    entry = store.activate(bad.id, actor="me", reason="the drop is expected", force=True)
    assert entry.forced and store.serving() == bad.id
    v3 = publish(store, 2, parent=v1.id, activate=True)
    assert store.rollback(actor="me").to == bad.id  # served once: no force needed again
    assert store.rollback(actor="me").to == v3.id  # rejections never count as a serving change
    assert verify_store(store).ok


def test_aliases_name_versions_with_an_audit_trail(store_uri: str) -> None:
    store = open_store(store_uri)
    v1, v2 = publish(store, activate=True), publish(store, 1)
    store.set_alias("champion", v2.id, actor="me", reason="best so far")
    store.set_alias("champion", v1.id, actor="you")
    assert store.aliases.all() == {"champion": v1.id}
    assert store.resolve("champion") == v1.id and store.resolve("serving") == v1.id
    assert store.resolve(v2.id) == v2.id
    trail = [(e.alias, e.from_, e.to, e.actor) for e in store.aliases.history()]
    assert trail == [("champion", None, v2.id, "me"), ("champion", v2.id, v1.id, "you")]
    store.set_alias("champion", None, actor="me")
    assert store.aliases.all() == {} and store.aliases.history()[-1].to is None
    with pytest.raises(NotFound, match="janus alias set"):
        store.resolve("champion")
    with pytest.raises(InvalidName, match="janus activate"):
        store.set_alias("serving", v2.id, actor="me")
    for bad in ("Champion", "../x", "a b", "", "x" * 64):
        with pytest.raises(InvalidName):
            store.set_alias(bad, v2.id, actor="me")
    with pytest.raises(NotFound):
        store.set_alias("ghost", "v0099", actor="me")
    assert store.history()[-1].to == v1.id  # an alias never moves what serves


def test_the_shadow_ref_names_a_verified_version_and_a_share(store_uri: str) -> None:
    store = open_store(store_uri)
    publish(store, activate=True)
    v2 = publish(store, 1)
    assert store.shadow() is None
    shadow = store.set_shadow(v2.id, 0.25, actor="me", reason="try it")
    assert shadow and store.shadow() == shadow and shadow.fraction == 0.25
    for fraction in (0.0, 1.5, -1.0):
        with pytest.raises(InvalidManifest):
            store.set_shadow(v2.id, fraction, actor="me")
    with pytest.raises(NotFound):
        store.set_shadow("v0099", 0.5, actor="me")
    store.set_shadow(None, actor="me")
    assert store.shadow() is None


def test_evaluation_sets_are_content_addressed_and_checked_on_read(store_uri: str) -> None:
    store = open_store(store_uri)
    images, labels = [b"\x89PNG fake one", b"\xff\xd8\xff two", b"three"], ["cat", "owl", "cat"]
    info = store.evalsets.add(images, labels, kind="holdout", source="learn job 1")
    assert info.classes == {"cat": 2, "owl": 1} and info.images == 3
    again = store.evalsets.add(images, labels, kind="holdout", source="learn job 2")
    assert again == info and len(store.evalsets.sets()) == 1  # same images, same set
    found = store.evalsets.read(info.digest)
    assert found.images == tuple(images) and found.labels == tuple(labels)
    fs, root = raw_fs(store_uri)
    path = f"{root}/evalsets/{info.digest}.safetensors"
    raw = bytearray(fs.cat_file(path))
    raw[-1] ^= 1
    fs.pipe_file(path, bytes(raw))
    with pytest.raises(IntegrityError, match="sha256"):
        store.evalsets.read(info.digest)
    with pytest.raises(NotFound):
        store.evalsets.read("0" * 64)
    with pytest.raises(NotFound):
        store.evalsets.info("../evil")
    with pytest.raises(InvalidManifest):
        store.evalsets.add([b"x"], [], kind="golden", source="me")
    golden = store.evalsets.add([b"four"], ["owl"], kind="golden", source="/data/golden")
    assert [s.kind for s in store.evalsets.sets()] == ["holdout", "golden"]
    body = json.loads(fs.cat_file(f"{root}/evalsets/{golden.digest}.json"))
    raw_set = fs.cat_file(f"{root}/evalsets/{golden.digest}.safetensors")
    assert body["digest"] == golden.digest == hashlib.sha256(raw_set).hexdigest()
