"""Metrics (DESIGN.md §3) on hand-made matrices, and the files written from them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from learner.metrics import (
    AccuracyMatrix,
    accuracy_from_counts,
    markdown_table,
    matrix_markdown,
    write_results,
)

# Three tasks with different test-set sizes, so weighted and unweighted means differ.
ROWS = [[90.0], [80.0, 70.0], [60.0, 65.0, 75.0]]
SIZES = [100, 50, 200]
# By hand:
#   after task 0: 90
#   after task 1: (80·100 + 70·50) / 150 = 11500 / 150
#   after task 2: (60·100 + 65·50 + 75·200) / 350 = 24250 / 350
AFTER = [90.0, 11500 / 150, 24250 / 350]
ACC = 24250 / 350  # ≈ 69.29, not the row mean 66.67
MAA = (90.0 + 11500 / 150 + 24250 / 350) / 3
BWT = ((60.0 - 90.0) + (65.0 - 70.0)) / 2  # = -17.5


@pytest.fixture
def matrix() -> AccuracyMatrix:
    return AccuracyMatrix(rows=[list(r) for r in ROWS], task_sizes=list(SIZES))


def test_hand_made_matrix(matrix: AccuracyMatrix) -> None:
    assert matrix.acc() == pytest.approx(ACC)
    assert matrix.maa() == pytest.approx(MAA)
    assert matrix.bwt() == pytest.approx(-17.5)
    assert BWT == -17.5
    assert [matrix.accuracy_after(t) for t in range(3)] == pytest.approx(AFTER)
    assert matrix.accuracy_after(-1) == pytest.approx(ACC)
    assert matrix.acc() != pytest.approx(sum(ROWS[-1]) / 3)  # weighted by samples, not tasks


def test_built_row_by_row_equals_constructor(matrix: AccuracyMatrix) -> None:
    m = AccuracyMatrix()
    for row, size in zip(ROWS, SIZES, strict=True):
        m.add_row(row, task_size=size)
    assert m.summary() == matrix.summary()


def test_single_task_bwt_is_zero() -> None:
    m = AccuracyMatrix([[42.0]], [10])
    assert m.bwt() == 0.0
    assert m.acc() == m.maa() == 42.0


def test_equal_sizes_reduce_to_row_mean() -> None:
    m = AccuracyMatrix([[100.0], [50.0, 70.0]], [7, 7])
    assert m.acc() == pytest.approx(60.0)
    assert m.maa() == pytest.approx(80.0)
    assert m.bwt() == pytest.approx(-50.0)


def test_square_and_summary(matrix: AccuracyMatrix) -> None:
    sq = matrix.to_square()
    assert sq == [[90.0, None, None], [80.0, 70.0, None], [60.0, 65.0, 75.0]]
    s = matrix.summary()
    assert set(s) >= {"acc", "maa", "bwt", "matrix"}
    assert s["matrix"] == sq
    assert s["acc_per_task"] == pytest.approx(AFTER)
    json.dumps(s, allow_nan=False)  # strict JSON: no NaN
    back = AccuracyMatrix.from_square(sq, SIZES)
    assert back.rows == ROWS


@pytest.mark.parametrize(
    ("rows", "sizes", "match"),
    [
        ([[90.0, 10.0]], [1], "row 0 needs 1"),
        ([[90.0], [80.0]], [1, 1], "row 1 needs 2"),
        ([[101.0]], [1], r"\[0, 100\]"),
        ([[math.nan]], [1], r"\[0, 100\]"),
        ([[50.0]], [0], "positive"),
    ],
)
def test_invalid_rows(rows: list[list[float]], sizes: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AccuracyMatrix(rows, sizes)


def test_missing_sizes_and_empty() -> None:
    with pytest.raises(ValueError, match="task sizes"):
        AccuracyMatrix([[50.0], [50.0, 50.0]], [10]).acc()
    with pytest.raises(ValueError, match="empty"):
        AccuracyMatrix().acc()


def test_accuracy_from_counts() -> None:
    assert accuracy_from_counts([9, 1], [10, 4]) == pytest.approx([90.0, 25.0])
    with pytest.raises(ValueError, match="task 1"):
        accuracy_from_counts([1, 5], [2, 4])
    with pytest.raises(ValueError, match="totals"):
        accuracy_from_counts([1], [2, 3])


def _results() -> dict:
    janus = AccuracyMatrix([list(r) for r in ROWS], list(SIZES)).summary()
    seq = AccuracyMatrix([[95.0], [10.0, 92.0], [0.0, 5.0, 90.0]], list(SIZES)).summary()
    return {
        "methods": {
            "janus": {**janus, "train_s": 12.5, "step_s": 0.030},
            "seq-lora": {**seq, "train_s": 10.0, "step_s": 0.020},
            # A ragged (one-row) matrix, as an upper bound may report it.
            "joint": {"acc": 88.0, "maa": 88.0, "bwt": 0.0, "matrix": [[88.0]], "train_s": 30.0},
        },
        "config": {"tasks": 3, "seed": 0, "data": Path("/tmp/x")},
    }


def test_markdown_table() -> None:
    md = markdown_table(_results())
    lines = md.strip().splitlines()
    assert lines[0].split("|")[1:-1] == [
        " method ",
        " ACC ",
        " MAA ",
        " BWT ",
        " train s ",
        " step ms ",
        " step / seq-lora ",
    ]
    janus = next(line for line in lines if line.startswith("| janus "))
    cells = [c.strip() for c in janus.split("|")[1:-1]]
    assert cells == ["janus", f"{ACC:.2f}", f"{MAA:.2f}", "-17.50", "12.5", "30.0", "1.50"]
    joint = next(line for line in lines if line.startswith("| joint "))
    assert joint.rstrip().endswith("| – | – |")  # no step time, no ratio
    no_seq = {"methods": {"janus": _results()["methods"]["janus"]}}
    assert "seq-lora" not in markdown_table(no_seq)


def test_matrix_markdown() -> None:
    md = matrix_markdown([[90.0, None], [80.0, 70.0]])
    assert md.splitlines()[2] == "| task 1 | 90.0 | – |"
    assert md.splitlines()[3] == "| task 2 | 80.0 | 70.0 |"


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 100 and im.size[1] > 100


def test_write_results(tmp_path: Path) -> None:
    out = tmp_path / "run"
    written = write_results(_results(), out)

    data = json.loads((out / "results.json").read_text())
    assert set(data) == {"methods", "config"}
    janus = data["methods"]["janus"]
    assert janus["acc"] == pytest.approx(ACC)
    assert janus["bwt"] == pytest.approx(BWT)
    assert janus["matrix"] == [[90.0, None, None], [80.0, 70.0, None], [60.0, 65.0, 75.0]]
    assert janus["step_s"] == 0.030
    assert data["config"]["data"] == "/tmp/x"

    md = (out / "results.md").read_text()
    assert markdown_table(_results()) in md
    for name in ("janus", "seq-lora", "joint"):
        assert f"## {name}: accuracy matrix" in md
    assert "| task 3 | 60.0 | 65.0 | 75.0 |" in md

    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "accuracy_matrix_janus.png",
        "accuracy_matrix_joint.png",
        "accuracy_matrix_seq-lora.png",
        "accuracy_per_task.png",
    ]
    for path in out.glob("*.png"):
        _assert_png(path)
    assert written["per_task"] == out / "accuracy_per_task.png"
    assert written["matrix:seq-lora"] == out / "accuracy_matrix_seq-lora.png"


def test_write_results_rejects_malformed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="methods"):
        write_results({"config": {}}, tmp_path)
    with pytest.raises(ValueError, match=r"'janus'.*'bwt'"):
        write_results({"methods": {"janus": {"acc": 1.0, "maa": 1.0, "matrix": [[1.0]]}}}, tmp_path)
