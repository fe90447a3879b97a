"""The class-incremental benchmark end to end on a tiny model and real digits (an .npz)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from learner.bench import (
    PRESETS,
    BenchConfig,
    BenchPreset,
    _beyond_the_edge,
    _train_config,
    chosen_settings,
    load_split,
    run_benchmark,
    run_step_benchmark,
    step_size_key,
    tune_step_size,
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
        methods=methods,
        preset=BenchPreset(
            train_per_class=60,
            test_per_class=30,
            epochs=1,
            image_size=32,
            tasks=2,
            backbone=TINY_BACKBONES["convnet"],
            lora=LoRAConfig(rank=2, alpha=2),
        ),
        train_overrides={"epochs": 1, "design_samples": 64},
        tune=False,
    )


def test_bench_writes_results_for_every_method_over_seeds(tmp_path: Path, digits) -> None:
    cfg = _tiny_bench(tmp_path, digits, ("janus", "lora-gpm", "seq-lora", "joint", "frozen"))
    cfg.seeds = 2
    results = run_benchmark(cfg, tmp_path / "out", log=lambda _s: None)
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(on_disk["methods"]) == {"janus", "lora-gpm", "seq-lora", "joint", "frozen"}
    assert on_disk["config"]["seeds"] == [0, 1]
    for name in ("janus", "lora-gpm", "seq-lora"):
        m = on_disk["methods"][name]
        runs = m["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
        assert m["acc"] == pytest.approx(np.mean([r["acc"] for r in runs]))
        assert m["acc_std"] == pytest.approx(np.std([r["acc"] for r in runs], ddof=1))
        assert m["bwt"] == pytest.approx(np.mean([r["bwt"] for r in runs]))
        assert m["step_s"] > 0 and m["train_s"] > 0
        first = runs[0]
        row = [v for v in first["matrix"][1] if v is not None]
        assert abs(first["acc"] - np.average(row, weights=first["task_sizes"])) < 1e-6
    janus, gpm = on_disk["methods"]["janus"], on_disk["methods"]["lora-gpm"]
    assert janus["violation"] < 1e-6 < gpm["violation"]  # only the paper's LoRA-GPM leaks
    assert on_disk["methods"]["seq-lora"]["violation"] is None  # it protects nothing
    assert on_disk["methods"]["seq-lora"]["drift"] > 0
    diffs = [g["acc"] - j["acc"] for g, j in zip(gpm["runs"], janus["runs"], strict=True)]
    assert gpm["vs_janus"]["acc"] == pytest.approx(np.mean(diffs))
    assert gpm["vs_janus"]["acc_std"] == pytest.approx(np.std(diffs, ddof=1))
    assert "vs_janus" not in janus
    assert on_disk["methods"]["joint"]["bwt"] is None
    frozen = on_disk["methods"]["frozen"]
    assert frozen["step_s"] is None and frozen["steps"] == 0 and 0 < frozen["acc"] <= 100
    assert results["config"]["tasks"][0] != results["config"]["tasks"][1]
    assert (tmp_path / "out" / "results.md").read_text().count("|") > 10
    assert (tmp_path / "out" / "accuracy_per_task.png").stat().st_size > 1000
    assert (tmp_path / "out" / "violation_per_layer.png").stat().st_size > 1000
    assert "± " in (tmp_path / "out" / "results.md").read_text()


def test_validation_is_carved_from_training_data_and_test_stays_apart(
    tmp_path: Path, digits
) -> None:
    cfg = _tiny_bench(tmp_path, digits, ("janus",))
    split = load_split(cfg)
    full = load_split(replace_val(cfg, 0.5))
    for test_task, val_task in zip(split.test, split.val, strict=True):
        assert val_task.train is test_task.train  # both fit on the same training part
        fit = {bytes(x) for x in test_task.train.images}
        held = {bytes(x) for x in val_task.test.images}
        tested = {bytes(x) for x in test_task.test.images}
        assert fit.isdisjoint(held) and held.isdisjoint(tested) and fit.isdisjoint(tested)
        assert len(val_task.test) == pytest.approx(0.2 * (len(fit) + len(held)), abs=3)
    assert len(full.test[0].train) < len(split.test[0].train)


def replace_val(cfg: BenchConfig, fraction: float) -> BenchConfig:
    from dataclasses import replace

    return replace(cfg, val_fraction=fraction)


def test_step_size_is_chosen_on_validation(tmp_path: Path, digits) -> None:
    cfg = _tiny_bench(tmp_path, digits, ("janus",))
    cfg.step_grid = (0.1, 10.0)
    split = load_split(cfg)
    tuned = tune_step_size("lora-gpm", split, cfg)
    assert tuned["key"] == "lr"
    default = _train_config(cfg, "lora-gpm").lr
    values = [r["value"] for r in tuned["search"]]
    assert values[1:] == pytest.approx([0.1 * default, 10 * default]) or values[:2] == (
        pytest.approx([0.1 * default, 10 * default])
    )  # two values always leave the winner on an edge: one more past it (100× apart)
    assert len(values) == 3
    best = max(tuned["search"], key=lambda r: r["val_acc"])
    assert tuned["value"] == best["value"]
    assert tune_step_size("janus", split, cfg)["key"] == "gr_lr"
    as_gr = replace_val(cfg, cfg.val_fraction)
    as_gr.train_overrides = {**cfg.train_overrides, "method.update": "gr"}
    assert step_size_key("lora-gpm", as_gr) == "gr_lr"  # the override's rule sets the key
    assert step_size_key("lora-gpm") == "lr" and step_size_key("frozen") is None
    assert tune_step_size("frozen", split, cfg) == {}  # trains nothing
    fixed = replace_val(cfg, cfg.val_fraction)
    fixed.train_overrides = {**cfg.train_overrides, "lr": 1e-3}
    assert tune_step_size("seq-lora", split, fixed) == {}  # a --set step size wins


def test_the_search_steps_past_the_edge_only_when_the_edge_wins() -> None:
    grid = (1 / 3, 1.0, 3.0)
    search = [{"value": v, "val_acc": a} for v, a in [(1.0, 50.0), (3.0, 60.0), (9.0, 55.0)]]
    assert _beyond_the_edge(search, grid) is None  # the best lies inside
    search[0]["val_acc"] = 70.0
    assert _beyond_the_edge(search, grid) == pytest.approx(1 / 3, rel=1e-3)
    search[2]["val_acc"] = 80.0
    assert _beyond_the_edge(search, grid) == pytest.approx(27.0)
    search[0]["val_acc"] = 80.0  # a tie: the smaller step wins, so the low edge
    assert _beyond_the_edge(search, grid) == pytest.approx(1 / 3, rel=1e-3)


def test_parallel_jobs_give_the_same_results_as_one(tmp_path: Path, digits) -> None:
    """Worker processes run the same searches and sequences: same choices, same figures."""
    cfg = _tiny_bench(tmp_path, digits, ("janus", "seq-lora", "frozen"))
    cfg.seeds, cfg.tune, cfg.step_grid = 2, True, (0.5, 1.0)
    cfg.train_overrides = {**cfg.train_overrides, "num_threads": 1}  # the same arithmetic
    one = run_benchmark(cfg, tmp_path / "one", log=lambda _s: None)
    cfg.jobs = 2
    lines: list[str] = []
    two = run_benchmark(cfg, tmp_path / "two", log=lines.append)
    for name in ("janus", "seq-lora", "frozen"):
        a, b = one["methods"][name], two["methods"][name]
        assert a["tuned"] == b["tuned"]
        assert [r["acc"] for r in a["runs"]] == [r["acc"] for r in b["runs"]]
        assert [r["seed"] for r in b["runs"]] == [0, 1]
    tuned = one["methods"]["janus"]["tuned"]
    assert len(tuned["search"]) == 3  # two, then one past the edge
    dml = tuned["dml_lambda"]  # then DML's weight at the chosen step size, 0 = without DML
    assert [r["value"] for r in dml["search"]] == pytest.approx([0.0, 0.167, 0.5])
    at_step = next(r for r in tuned["search"] if r["value"] == tuned["value"])
    assert dml["search"][-1]["val_acc"] == at_step["val_acc"]  # the default λ is not rerun
    assert chosen_settings(tuned) == {"gr_lr": tuned["value"], "dml_lambda": dml["value"]}
    assert "dml_lambda" not in one["methods"]["seq-lora"]["tuned"]  # no DML to weigh
    assert two["config"]["jobs"] == 2 and lines[-1].endswith("with 2 job(s)")
    with pytest.raises(ValueError, match="jobs"):
        cfg.jobs = 0
        run_benchmark(cfg, tmp_path / "none", log=lambda _s: None)


def test_step_sizes_chosen_before_are_reused(tmp_path: Path, digits) -> None:
    from learner.bench import chosen_step_sizes

    earlier = tmp_path / "earlier.json"
    tuned = {"key": "lr", "value": 0.0123, "search": [{"value": 0.0123, "val_acc": 50.0}]}
    earlier.write_text(json.dumps({"methods": {"seq-lora": {"tuned": tuned}, "frozen": {}}}))
    cfg = _tiny_bench(tmp_path, digits, ("seq-lora",))
    cfg.tune, cfg.chosen = True, chosen_step_sizes(earlier)
    assert cfg.chosen == {"seq-lora": tuned}
    lines: list[str] = []
    results = run_benchmark(cfg, tmp_path / "out", log=lines.append)
    assert results["methods"]["seq-lora"]["tuned"] == tuned  # no new search
    assert any("0.0123 chosen on validation" in line and "earlier run" in line for line in lines)
    with pytest.raises(ValueError, match=r"results\.json"):
        chosen_step_sizes(tmp_path / "missing.json")


def test_cli_lists_every_preset() -> None:
    from service.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["bench", "cl", "--preset", "fashion-64"])
    assert args.preset == "fashion-64"
    choices = next(
        a.choices for a in _subparser(parser, "bench", "cl")._actions if a.dest == "preset"
    )
    assert tuple(choices) == tuple(PRESETS)


def _subparser(parser, *names: str):
    for name in names:
        action = next(
            a for a in parser._actions if hasattr(a, "choices") and name in (a.choices or {})
        )
        parser = action.choices[name]
    return parser


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
    assert _train_config(cfg, "inflora").method.train_a is False
    tuned = _train_config(cfg, "janus", seed=3, overrides={"gr_lr": 1e-4})
    assert tuned.gr_lr == 1e-4 and tuned.seed == 3  # the rest of the preset stays
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
        assert res["task_s"] == pytest.approx(res["start_s"] + res["train_s"] + res["end_s"])
        assert res["train_s"] > 0 and res["end_s"] > 0
    assert results["methods"]["seq-lora"]["ratio"] == 1.0
    assert results["methods"]["seq-lora"]["task_ratio"] == 1.0


def test_step_bench_refuses_a_method_that_trains_nothing(tmp_path: Path, digits) -> None:
    with pytest.raises(ValueError, match="'frozen' trains nothing"):
        run_step_benchmark(_tiny_bench(tmp_path, digits, ("frozen",)), rounds=1)
    with pytest.raises(ValueError, match="rounds"):
        run_step_benchmark(_tiny_bench(tmp_path, digits, ("janus",)), rounds=0)


def test_cli_step_bench_refuses_a_method_that_trains_nothing(tmp_path: Path, capsys) -> None:
    code = main(["bench", "step", "--methods", "frozen", "--out", str(tmp_path)])
    assert code == 2 and "trains nothing" in capsys.readouterr().err
