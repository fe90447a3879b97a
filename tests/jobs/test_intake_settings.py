"""Dataset intake, job arguments and job settings: what is refused, and with which message."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from learner.data import DataError, LabeledBatch, in_memory, write_class_folders
from learner.jobs.client import LearnRequest
from learner.jobs.intake import open_dataset, open_new_classes, stage_dataset
from learner.jobs.settings import JobSettings


def _folder(digits: LabeledBatch, root: Path, names: list[str], per_class: int = 6) -> Path:
    batch = digits.select_classes(names)
    keep = [i for c in range(len(names)) for i in (batch.labels == c).nonzero()[0][:per_class]]
    return write_class_folders(batch.subset(keep), root)


def _load(path: Path, known: Sequence[str] = (), min_per_class: int = 5) -> LabeledBatch:
    with open_new_classes(
        path, known, image_size=16, min_per_class=min_per_class, max_bytes=1 << 30
    ) as batch:
        return in_memory(batch)


def test_new_classes_load(tmp_path: Path, digits: LabeledBatch) -> None:
    batch = _load(_folder(digits, tmp_path / "d", ["digit0", "digit1"]))
    assert batch.class_names == ("digit0", "digit1") and len(batch) == 12
    assert batch.images.shape[1:] == (16, 16, 3)  # read at the model's side


def test_known_class_is_refused(tmp_path: Path, digits: LabeledBatch) -> None:
    path = _folder(digits, tmp_path / "d", ["digit0", "digit1"])
    with pytest.raises(DataError, match=r"\['digit1'\] are already learned.*class-incremental"):
        _load(path, known=["digit1", "digit7"])


def test_too_few_images_is_refused(tmp_path: Path, digits: LabeledBatch) -> None:
    path = _folder(digits, tmp_path / "d", ["digit0", "digit1"], per_class=3)
    with pytest.raises(DataError, match="fewer than 5 images"):
        _load(path)


def test_undecodable_image_names_the_file(tmp_path: Path, digits: LabeledBatch) -> None:
    path = _folder(digits, tmp_path / "d", ["digit0", "digit1"])
    (path / "digit0" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken\.png: not a recognised image.*replace or remove"):
        _load(path)


def test_archive_escaping_its_folder_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("../../escape.png")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(DataError, match=r"evil\.tar"):
        _load(archive)
    assert not (tmp_path.parent / "escape.png").exists()


def test_paths_outside_the_roots_are_refused(tmp_path: Path) -> None:
    roots = (tmp_path / "allowed",)
    (tmp_path / "allowed").mkdir()
    kw: dict[str, Any] = {"roots": roots, "store_uri": str(tmp_path / "store"), "max_bytes": 1}
    for ref in (str(tmp_path / "other"), str(tmp_path / "allowed" / ".." / "other"), "s3://b/x"):
        with (
            pytest.raises(DataError, match=r"allowed dataset roots|only local paths"),
            open_dataset(ref, **kw),
        ):
            pass
    with open_dataset(f"file://{tmp_path}/allowed/x", **kw) as path:
        assert path == tmp_path / "allowed" / "x"


def test_staged_dataset_round_trip(tmp_path: Path, digits: LabeledBatch) -> None:
    src = _folder(digits, tmp_path / "d", ["digit0", "digit1"])
    store = str(tmp_path / "store")
    ref = stage_dataset(src, store)
    assert ref == stage_dataset(src, store)  # content-addressed, deterministic
    with open_dataset(ref, roots=(), store_uri=store, max_bytes=1 << 30) as path:
        batch = _load(path)
    assert batch.class_names == ("digit0", "digit1") and len(batch) == 12
    assert batch.images.shape[1:] == (16, 16, 3)  # read at the model's side
    with (
        pytest.raises(DataError, match="not staged"),
        open_dataset("datasets/" + "0" * 64, roots=(), store_uri=store, max_bytes=1 << 30),
    ):
        pass


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"parent": "../v1"}, "parent must be"),
        ({"method": "nope"}, "unknown method"),
        ({"train": {"epochs": 0}}, "epochs"),
        ({"train": {"no_such": 1}}, "no_such"),
        ({"idempotency_key": "a/b"}, "invalid idempotency key"),
        ({"activation": "sometimes"}, "activation"),
        (  # a path through timm's keyword arguments: refused by name
            {"backbone": {"name": "test_vit", "model_kwargs": {"checkpoint_path": 1}}},
            r"\['checkpoint_path'\] are not accepted",
        ),
        (  # and no string value at all, whatever the key
            {"backbone": {"name": "test_vit", "model_kwargs": {"img_size": "/etc/passwd"}}},
            "model_kwargs.img_size",
        ),
    ],
)
def test_learn_request_validation(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LearnRequest.model_validate({"dataset": "/data/x", **fields})


def test_learn_request_round_trips_as_json() -> None:
    req = LearnRequest(dataset="/d", parent="v0002", train={"epochs": 2}, idempotency_key="k-1")
    assert LearnRequest.model_validate_json(req.model_dump_json()) == req
    assert req.train_config().epochs == 2 and req.train_config().method.name == "janus"


def test_settings_from_env(tmp_path: Path) -> None:
    env = {
        "JANUS_DATA_DIR": str(tmp_path),
        "JANUS_DATASET_ROOTS": f"{tmp_path}/a:{tmp_path}/b",
        "JANUS_JOB_SOFT_TIME_LIMIT_S": "10",
        "JANUS_JOB_TIME_LIMIT_S": "20",
        "JANUS_VISIBILITY_TIMEOUT_S": "30",
        "JANUS_HEARTBEAT_S": "5",
    }
    s = JobSettings.from_env(env)
    assert s.redis_url is None and s.job_time_limit_s == 20
    assert s.allowed_roots == (tmp_path / "a", tmp_path / "b")
    assert s.store_uri == str(tmp_path / "store")
    assert JobSettings.from_env({"JANUS_DATA_DIR": str(tmp_path)}).allowed_roots == (
        tmp_path / "datasets",
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JANUS_VISIBILITY_TIMEOUT_S": "50"}, "delivered a second time while it runs"),
        (
            {"JANUS_JOB_SOFT_TIME_LIMIT_S": "60", "JANUS_JOB_TIME_LIMIT_S": "60"},
            "the soft limit asks",
        ),
        ({"JANUS_REDIS_URL": "http://x"}, "redis://"),
        ({"JANUS_MIN_PER_CLASS": "1"}, "JANUS_MIN_PER_CLASS"),
    ],
)
def test_settings_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JobSettings.from_env(env)


def test_gc_removes_only_staged_datasets_past_the_age(
    tmp_path: Path, digits: LabeledBatch, monkeypatch, capsys
) -> None:
    import os
    import time

    from service.cli import main

    store = tmp_path / "data" / "store"
    old = stage_dataset(_folder(digits, tmp_path / "a", ["digit0", "digit1"]), str(store))
    new = stage_dataset(_folder(digits, tmp_path / "b", ["digit2", "digit3"]), str(store))
    week_ago = time.time() - 8 * 86400
    os.utime(store / old, (week_ago, week_ago))
    (store / "datasets" / "notes.txt").write_text("not a staged dataset")
    os.utime(store / "datasets" / "notes.txt", (week_ago, week_ago))
    monkeypatch.setenv("JANUS_DATA_DIR", str(tmp_path / "data"))
    assert main(["gc", "--dry-run"]) == 0
    assert f"would remove {old}" in capsys.readouterr().out and (store / old).exists()
    assert main(["gc", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [old]
    assert not (store / old).exists() and (store / new).exists()
    assert (store / "datasets" / "notes.txt").exists()  # not ours: left alone
