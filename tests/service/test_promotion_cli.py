"""`janus alias | eval | shadow`, and activate's shadow requirement, on a local copy of the
service store (in-process `main`, no service)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from adapters_store import open_store
from learner.data import LabeledBatch, write_class_folders
from service.cli import main


@pytest.fixture()
def store(version_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    root = tmp_path / "store"
    shutil.copytree(version_store, root)
    monkeypatch.delenv("JANUS_REDIS_URL", raising=False)
    monkeypatch.setenv("JANUS_DATA_DIR", str(tmp_path / "data"))  # no Redis runs there
    return str(root)


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_aliases_from_the_command_line(capsys: pytest.CaptureFixture[str], store: str) -> None:
    code, out, _ = _run(capsys, "alias", "set", "champion", "v0001", "--store", store)
    assert code == 0 and out.strip() == "champion → v0001 (was unset)"
    code, out, _ = _run(capsys, "alias", "list", "--json", "--store", store)
    assert json.loads(out) == {"champion": "v0001", "serving": "v0002"}
    code, out, _ = _run(capsys, "versions", "--store", store)
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert rows["v0001"].rstrip().endswith("@champion") and "serving" in rows["v0002"]
    code, _, err = _run(capsys, "alias", "set", "serving", "v0001", "--store", store)
    assert code == 1 and "janus activate" in err
    code, out, _ = _run(capsys, "alias", "rm", "champion", "--store", store)
    assert code == 0 and open_store(store).aliases.all() == {}


def test_golden_sets_from_the_command_line(
    capsys: pytest.CaptureFixture[str], store: str, digits: LabeledBatch, tmp_path: Path
) -> None:
    picks = np.concatenate([np.nonzero(digits.labels == c)[0][:3] for c in (0, 1)])
    folder = write_class_folders(
        digits.subset(picks).select_classes(["digit0", "digit1"]), tmp_path / "golden"
    )
    code, out, _ = _run(capsys, "eval", "add", str(folder), "--store", store)
    assert code == 0 and "golden" in out and "digit0 (3)" in out
    code, out, _ = _run(capsys, "eval", "list", "--json", "--store", store)
    (info,) = json.loads(out)
    assert info["kind"] == "golden" and info["classes"] == {"digit0": 3, "digit1": 3}
    kept = open_store(store).evalsets.read(info["digest"])
    assert kept.images[0] == sorted((folder / "digit0").iterdir())[0].read_bytes()  # as is
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 8, 8, 1), np.uint8), labels=[0, 1])
    code, _, err = _run(capsys, "eval", "add", str(tmp_path / "x.npz"), "--store", store)
    assert code == 1 and "class folders" in err


def test_shadow_from_the_command_line(capsys: pytest.CaptureFixture[str], store: str) -> None:
    code, out, _ = _run(capsys, "shadow", "v0001", "--fraction", "0.5", "--store", store)
    assert code == 0 and "v0001 shadows the serving version on 50 %" in out
    code, out, _ = _run(capsys, "shadow", "--json", "--store", store)
    answer = json.loads(out)
    assert answer["shadow"]["version"] == "v0001" and answer["counts"] is None  # no Redis here
    code, out, _ = _run(capsys, "versions", "show", "v0001", "--store", store)
    assert "unknown (no Redis)" in out
    code, _, err = _run(capsys, "activate", "v0001", "--min-shadowed", "5", "--store", store)
    assert code == 1 and "shadow counts are unknown" in err
    assert open_store(store).serving() == "v0002"
    code, out, _ = _run(capsys, "shadow", "--off", "--store", store)
    assert code == 0 and open_store(store).shadow() is None
    code, _, err = _run(capsys, "shadow", "v0001", "--fraction", "2", "--store", store)
    assert code == 1 and "fraction" in err


def test_the_examples_golden_set_holds_test_images_of_the_six_example_classes(
    tmp_path: Path,
) -> None:
    """What `janus up` attaches to a new store: never an image it learns from, nor a query."""
    from learner.jobs.evaluation import golden_set
    from service.up import EXAMPLES, FIRST_TASK, GOLDEN

    info = golden_set(open_store(tmp_path / "store"), GOLDEN, max_bytes=1 << 24, max_images=1000)
    assert info.kind == "golden" and set(info.classes.values()) == {30}
    task2 = EXAMPLES / "fashion-mnist" / "task2"
    assert set(info.classes) == {p.name for p in [*FIRST_TASK.iterdir(), *task2.iterdir()]}
    seen = {
        p.read_bytes() for d in (FIRST_TASK, task2, EXAMPLES / "images") for p in d.rglob("*.png")
    }
    kept = open_store(tmp_path / "store").evalsets.read(info.digest)
    assert not seen & set(kept.images)
