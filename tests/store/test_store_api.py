"""Publishing, reading, lineage, integrity, serving and audit, on every backend."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from store_helpers import WEIGHTS, draft, files, publish, raw_fs, snapshot

from adapters_store import (
    IntegrityError,
    InvalidManifest,
    NotFound,
    NothingToRollBack,
    StoreNotFound,
    open_store,
    verify_store,
)
from adapters_store.manifest import ADAPTER, HEAD, ONNX


def test_publish_then_read_back_verified(store_uri: str) -> None:
    store = open_store(store_uri)
    given = files(seed=3)
    manifest = publish(store, seed=3)

    assert manifest.id == "v0001"
    assert set(manifest.files) == {ADAPTER, HEAD, ONNX}
    arrays = store.read_tensors(manifest.id, ADAPTER)
    assert arrays.keys() == given[ADAPTER].keys()
    for name, array in given[ADAPTER].items():
        np.testing.assert_array_equal(arrays[name], array)
    assert store.read_bytes(manifest.id, ONNX) == given[ONNX]
    # a second process (a fresh store object, no cache) sees the same manifest
    assert open_store(store_uri).get(manifest.id) == manifest


def test_ids_are_monotone_and_lineage_walks_to_the_root(store_uri: str) -> None:
    store = open_store(store_uri)
    first = publish(store)
    second = publish(
        store,
        seed=1,
        parent=first.id,
        task_index=1,
        classes=["cat", "dog", "eel"],
        new_classes=["eel"],
    )
    third = publish(store, seed=2, parent=second.id, task_index=2)

    assert [m.id for m in store.versions()] == ["v0001", "v0002", "v0003"]
    assert [m.id for m in store.lineage(third.id)] == [third.id, second.id, first.id]
    assert store.get(second.id).new_classes == ["eel"]


def test_idempotency_key_published_twice_gives_one_version(store_uri: str) -> None:
    store = open_store(store_uri)
    once = publish(store, idempotency_key="job-7.task-1")
    again = publish(store, seed=9, idempotency_key="job-7.task-1")

    assert again == once
    assert store.version_ids() == [once.id]
    assert store.find_by_key("job-7.task-1") == once
    assert store.find_by_key("other") is None


def test_bad_drafts_are_refused_with_a_hint(store_uri: str) -> None:
    store = open_store(store_uri)
    with pytest.raises(InvalidManifest, match="janus versions"):
        publish(store, parent="v0042")
    first = publish(store)
    other = {"name": "test_vit", "weights_sha256": "ef" * 32}
    with pytest.raises(InvalidManifest, match="backbone"):
        publish(store, parent=first.id, backbone=other)
    with pytest.raises(InvalidManifest, match="new_classes"):
        publish(store, new_classes=["eel"])
    with pytest.raises(InvalidManifest, match="safetensors"):
        store.publish({HEAD: b"not safetensors"}, draft())
    with pytest.raises(InvalidManifest, match="numpy"):
        store.publish({HEAD: {"w": [1.0, 2.0]}}, draft())  # type: ignore[dict-item]
    with pytest.raises(InvalidManifest, match=r"NaN|finite"):
        publish(store, metrics={"accuracy": float("nan")})
    with pytest.raises(InvalidManifest, match="JSON"):
        publish(store, hyperparameters={"lr": float("inf")})
    assert store.version_ids() == [first.id]


def test_missing_store_and_missing_version_say_what_to_do(store_uri: str) -> None:
    with pytest.raises(StoreNotFound, match="JANUS_STORE"):
        open_store(store_uri, create=False)
    store = open_store(store_uri)
    with pytest.raises(NotFound, match="janus versions"):
        store.get("v0001")
    manifest = publish(store)
    with pytest.raises(NotFound, match=r"adapter\.safetensors"):
        store.read_bytes(manifest.id, "prototypes.safetensors")


def _flip(uri: str, version_id: str, name: str, position: float) -> None:
    fs, root = raw_fs(uri)
    path = f"{root}/versions/{version_id}/{name}"
    data = bytearray(fs.cat_file(path))
    index = min(int(position * len(data)), len(data) - 1)
    data[index] ^= 0x01
    fs.pipe_file(path, bytes(data))


@pytest.mark.parametrize(
    ("name", "position"),
    [
        (ADAPTER, 0.0),
        (ADAPTER, 0.5),
        (ADAPTER, 1.0),
        (HEAD, 0.5),
        (ONNX, 0.5),
        ("manifest.json", 0.5),
    ],
)
def test_one_flipped_byte_is_a_typed_error_naming_the_file(
    store_uri: str, name: str, position: float
) -> None:
    store = open_store(store_uri)
    good = publish(store, activate=True)
    bad = publish(store, seed=1, parent=good.id)
    _flip(store_uri, bad.id, name, position)

    fresh = open_store(store_uri)  # no cached manifest
    with pytest.raises(IntegrityError) as caught:
        fresh.verify_version(bad.id)
    assert caught.value.file == name
    assert caught.value.version == bad.id
    assert name in str(caught.value) and "janus verify" in str(caught.value)

    report = verify_store(fresh)
    assert not report.ok
    assert [(p.version, p.file) for p in report.problems] == [(bad.id, name)]
    with pytest.raises(IntegrityError):  # a damaged version is never served
        fresh.activate(bad.id, actor="ops")
    assert fresh.serving() == good.id
    fresh.verify_version(good.id)


def test_activate_and_rollback_move_only_the_pointer(store_uri: str) -> None:
    store = open_store(store_uri)
    first = publish(store)
    second = publish(store, seed=1, parent=first.id)
    store.activate(first.id, actor="alice", reason="initial deploy")
    before = snapshot(store_uri)

    entry = store.activate(second.id, actor="bob", reason="task 2 is better")
    after = snapshot(store_uri)
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    assert changed <= {"refs/serving", "log/serving.jsonl"}, changed
    assert after["refs/serving"] == b"v0002\n"
    assert (entry.from_, entry.to, entry.actor) == (first.id, second.id, "bob")

    back = store.rollback(actor="carol", reason="accuracy dropped in prod")
    assert (back.from_, back.to, back.action) == (second.id, first.id, "rollback")
    assert store.serving() == first.id
    rolled = snapshot(store_uri)
    assert {p for p in rolled if rolled[p] != after.get(p)} <= {"refs/serving", "log/serving.jsonl"}

    history = open_store(store_uri).history()
    assert [(e.action, e.actor, e.reason, e.from_, e.to) for e in history] == [
        ("activate", "alice", "initial deploy", None, first.id),
        ("activate", "bob", "task 2 is better", first.id, second.id),
        ("rollback", "carol", "accuracy dropped in prod", second.id, first.id),
    ]
    times = [e.time for e in history]
    assert times == sorted(times) and all(t.tzinfo is not None for t in times)


def test_rollback_toggles_or_goes_to_a_named_version(store_uri: str) -> None:
    store = open_store(store_uri)
    ids = [publish(store, seed=i).id for i in range(3)]
    with pytest.raises(NothingToRollBack, match="--to"):
        store.rollback()
    store.activate(ids[0])
    with pytest.raises(NothingToRollBack):
        store.rollback()
    store.activate(ids[1])
    store.activate(ids[2])

    assert store.rollback().to == ids[1]
    assert store.rollback().to == ids[2]  # like `kubectl rollout undo`: swaps back
    assert store.rollback(to=ids[0], reason="known good").to == ids[0]
    assert store.serving() == ids[0]
    with pytest.raises(NotFound):
        store.rollback(to="v0099")
    assert store.serving() == ids[0]


def test_publish_can_activate_and_verify_is_clean(store_uri: str) -> None:
    store = open_store(store_uri)
    manifest = publish(store, activate=True)
    assert store.serving() == manifest.id
    assert store.history()[-1].actor == "tester"
    report = verify_store(store)
    assert report.ok and report.checked == [manifest.id] and not report.warnings


def test_stray_file_in_a_version_is_reported(store_uri: str) -> None:
    store = open_store(store_uri)
    manifest = publish(store)
    fs, root = raw_fs(store_uri)
    fs.pipe_file(f"{root}/versions/{manifest.id}/extra.bin", b"?")
    report = verify_store(store)
    assert [(p.version, p.file) for p in report.problems] == [(manifest.id, "extra.bin")]


def test_manifest_records_the_design_fields(store_uri: str) -> None:
    store = open_store(store_uri)
    manifest = publish(store, idempotency_key="k1")
    assert manifest.schema_version == 1
    assert manifest.backbone.weights_sha256 == WEIGHTS
    assert manifest.hyperparameters["rank"] == 4
    assert manifest.job_id == "job-1" and manifest.idempotency_key == "k1"
    assert manifest.created_at.tzinfo is not None
    assert all(len(e.sha256) == 64 and e.size > 0 for e in manifest.files.values())


def test_a_retried_job_activates_once(store_uri: str) -> None:
    store = open_store(store_uri)
    first = publish(store, activate=True)
    job = publish(store, seed=1, idempotency_key="job-9", activate=True)
    store.rollback(actor="ops", reason="bad")
    assert publish(store, seed=1, idempotency_key="job-9", activate=True) == job
    assert store.serving() == first.id  # a late retry does not undo the operator's rollback
    assert len(store.history()) == 3


def test_a_retry_activates_a_version_its_first_attempt_published_without_activating(
    store_uri: str,
) -> None:
    store = open_store(store_uri)  # an empty audit log: the case that once raised ValueError
    job = publish(store, idempotency_key="job-3")
    assert store.history() == [] and store.serving() is None

    assert publish(store, idempotency_key="job-3", activate=True) == job
    assert store.serving() == job.id and [e.to for e in store.history()] == [job.id]
    assert store.activate_unless_served(job.id, actor="ops") is None  # served: nothing to do
    assert len(store.history()) == 1


def test_activate_unless_served_treats_an_interrupted_activation_as_not_served(
    store_uri: str,
) -> None:
    store = open_store(store_uri)
    first = publish(store, activate=True)
    second = publish(store, seed=1)
    fs, root = raw_fs(store_uri)
    store.activate(second.id, actor="ops")
    fs.pipe_file(f"{root}/refs/serving", f"{first.id}\n".encode())  # the pointer write was lost

    entry = store.activate_unless_served(second.id, actor="ops", reason="retry")
    assert entry is not None and entry.from_ == first.id
    assert store.serving() == second.id


def test_a_damaged_pointer_is_reported_and_repaired_by_activating(store_uri: str) -> None:
    store = open_store(store_uri)
    manifest = publish(store, activate=True)
    fs, root = raw_fs(store_uri)
    fs.pipe_file(f"{root}/refs/serving", b"../../etc\n")
    with pytest.raises(IntegrityError, match="refs/serving"):
        store.serving()
    assert [p.file for p in verify_store(store).problems] == ["refs/serving"]
    store.activate(manifest.id, actor="ops", reason="repair pointer")
    assert store.serving() == manifest.id and verify_store(store).ok


def test_threads_publishing_at_once_get_distinct_ids(tmp_path: Path) -> None:
    uri = str(tmp_path / "store")
    open_store(uri)

    def job(seed: int) -> str:
        store = open_store(uri)  # like separate workers: each its own handle
        return str(publish(store, seed=seed, idempotency_key=f"job-{seed % 3}").id)

    with ThreadPoolExecutor(max_workers=6) as pool:
        ids = list(pool.map(job, range(6)))
    assert len(set(ids)) == 3  # three keys, three versions
    assert ids[:3] == ids[3:]
    store = open_store(uri)
    assert len(store.version_ids()) == 3 and verify_store(store).ok


def test_a_file_uri_opens_the_same_local_store(tmp_path: Path) -> None:
    manifest = publish(open_store(tmp_path / "store"))
    assert open_store(f"file://{tmp_path}/store", create=False).get(manifest.id) == manifest


@pytest.mark.parametrize("store_uri", ["memory", "s3"], indirect=True)  # conditional PUTs
def test_a_commit_retried_after_its_answer_was_lost_finds_its_own_manifest(
    store_uri: str,
) -> None:
    """On S3 a retried conditional PUT whose first try succeeded gets 412: the commit must take
    the manifest it finds for its own when it is, and refuse another's."""
    from adapters_store._backend import ObjectBackend

    store = open_store(store_uri)
    backend = store._backend
    assert isinstance(backend, ObjectBackend)
    staging = backend.staging_dir("v0001", "t")
    backend.commit(staging, "v0001", b'{"id": "v0001", "mine": true}')
    backend.commit(staging, "v0001", b'{"id": "v0001", "mine": true}')  # the retry: no error
    with pytest.raises(FileExistsError):
        backend.commit(staging, "v0001", b'{"id": "v0001", "mine": false}')


def test_leftovers_of_another_container_are_judged_by_age_not_by_our_pids(tmp_path: Path) -> None:
    """Containers sharing a volume (and a pod's hostname) number their pids alike: a temp file
    or a reservation from another process space is removed by age only."""
    import os
    import socket
    import time

    from adapters_store._owner import Owner, process_space

    store = open_store(tmp_path / "store")
    dead_pid = 4_000_000  # above pid_max: no such process here
    names = {
        "ours": f".tmp-{process_space()}-{dead_pid}-aa",
        "theirs_young": f".tmp-0123456789ab-{dead_pid}-bb",
        "theirs_old": f".tmp-0123456789ab-{dead_pid}-cc",
    }
    for name in names.values():
        (tmp_path / "store" / name).write_bytes(b"partial")
    old = time.time() - 7200
    os.utime(tmp_path / "store" / names["theirs_old"], (old, old))
    removed = store.clean_staging(stale_after_s=3600)
    assert names["ours"] in removed and names["theirs_old"] in removed  # dead here; too old
    assert (tmp_path / "store" / names["theirs_young"]).exists()  # maybe alive over there
    neighbour = Owner(
        host=socket.gethostname(), pid=dead_pid, token="t", started=time.time(), space="other"
    )
    assert neighbour.alive(3600)  # same hostname, another pid namespace: not judged by pid
    assert not neighbour.model_copy(update={"space": process_space()}).alive(3600)
