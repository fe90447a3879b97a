"""The class-incremental benchmark end to end on a tiny model and real digits (an .npz)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from learner.bench import (
    BenchConfig,
    BenchPreset,
    _train_config,
    run_benchmark,
    run_step_benchmark,
)
from learner.config import LoRAConfig
from service.cli import main
from tests.conftest import TINY_BACKBONES


def _tiny_bench(tmp_path: Path, digits, methods: tuple[str, ...]) -> BenchConfig:
    npz = tmp_path / "digits.npz"
    np.savez(
        npz,
        images=digits.images[..., 0],
        labels=digits.labels,
        class_names=np.array(digits.class_names),
    )
    return BenchConfig(
        data=str(npz),
        tasks=2,
        methods=methods,
        preset=BenchPreset(train_per_class=60, test_per_class=30, epochs=1, image_size=32),
        backbone=TINY_BACKBONES["convnet"],
        lora=LoRAConfig(rank=2, alpha=2),
        train_overrides={"epochs": 1, "design_samples": 64},
    )


def test_bench_writes_results_for_every_method(tmp_path: Path, digits) -> None:
    cfg = _tiny_bench(tmp_path, digits, ("janus", "seq-lora", "joint", "frozen"))
    results = run_benchmark(cfg, tmp_path / "out", log=lambda _s: None)
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(on_disk["methods"]) == {"janus", "seq-lora", "joint", "frozen"}
    for name in ("janus", "seq-lora"):
        m = on_disk["methods"][name]
        assert len(m["matrix"]) == 2 and 0 <= m["acc"] <= 100
        assert m["step_s"] > 0 and m["train_s"] > 0
        row = [v for v in m["matrix"][1] if v is not None]
        assert abs(m["acc"] - np.average(row, weights=on_disk["config"]["test_sizes"])) < 1e-6
    assert on_disk["methods"]["joint"]["bwt"] is None
    frozen = on_disk["methods"]["frozen"]
    assert frozen["step_s"] is None and frozen["steps"] == 0 and 0 < frozen["acc"] <= 100
    assert results["config"]["tasks"][0] != results["config"]["tasks"][1]
    assert (tmp_path / "out" / "results.md").read_text().count("|") > 10
    assert (tmp_path / "out" / "accuracy_per_task.png").stat().st_size > 1000


def test_cli_refuses_unknown_method(tmp_path: Path, capsys) -> None:
    code = main(["bench", "cl", "--methods", "janus,nope", "--out", str(tmp_path), "--no-progress"])
    assert code == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_method_fields_are_overridden_for_every_method() -> None:
    cfg = BenchConfig(train_overrides={"method.head": "prototype", "gr_lr": 5e-5})
    for name in ("janus", "inflora"):
        train = _train_config(cfg, name)
        assert train.method.head == "prototype" and train.method.name == name
        assert train.gr_lr == 5e-5
    assert _train_config(cfg, "inflora").method.train_a is False  # the rest of the preset stays
    with pytest.raises(ValueError, match="head"):
        _train_config(BenchConfig(train_overrides={"method.head": "nope"}), "janus")


def test_step_bench_interleaves_methods_and_reports_median_ratios(tmp_path: Path, digits) -> None:
    cfg = _tiny_bench(tmp_path, digits, ("janus", "inflora"))
    lines: list[str] = []
    results = run_step_benchmark(cfg, rounds=3, baseline="seq-lora", log=lines.append)

    assert list(results["methods"]) == ["seq-lora", "janus", "inflora"]  # baseline first
    assert len(lines) == 3 and results["rounds"] == 3
    base = results["methods"]["seq-lora"]["step_s"]
    for res in results["methods"].values():
        assert len(res["samples_s"]) == 3 and all(s > 0 for s in res["samples_s"])
        assert res["step_s"] == float(np.median(res["samples_s"]))
        assert res["ratio"] == pytest.approx(res["step_s"] / base)
    assert results["methods"]["seq-lora"]["ratio"] == 1.0


def test_step_bench_refuses_a_method_that_trains_nothing(tmp_path: Path, digits) -> None:
    with pytest.raises(ValueError, match="'frozen' trains nothing"):
        run_step_benchmark(_tiny_bench(tmp_path, digits, ("frozen",)), rounds=1)
    with pytest.raises(ValueError, match="rounds"):
        run_step_benchmark(_tiny_bench(tmp_path, digits, ("janus",)), rounds=0)


def test_cli_step_bench_refuses_a_method_that_trains_nothing(tmp_path: Path, capsys) -> None:
    code = main(["bench", "step", "--methods", "frozen", "--out", str(tmp_path)])
    assert code == 2 and "trains nothing" in capsys.readouterr().err
