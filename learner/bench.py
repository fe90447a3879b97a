"""Class-incremental benchmark: every method on the same split in one run (`janus bench cl`).

Writes `results.json` (`{"methods": {name: {acc, maa, bwt, matrix, train_s, step_s}}, "config"}`,
accuracies in percent), `results.md` and the plots of `learner.metrics`. `janus bench step`
(`run_step_benchmark`) measures only step times, with the methods interleaved.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learner.config import BackboneConfig, LoRAConfig, MethodConfig, TrainConfig
from learner.data import LabeledBatch, Task, class_incremental_split, load_batch, load_fashion_mnist
from learner.data import per_class_limit as limit_per_class
from learner.methods import ABLATIONS, get_method
from learner.metrics import AccuracyMatrix, write_results
from learner.state import LearnerState
from learner.train import ProgressFn, evaluate, learn_task


@dataclass(frozen=True)
class BenchPreset:
    """How much data and training a benchmark run uses."""

    train_per_class: int
    test_per_class: int
    epochs: int
    image_size: int


PRESETS = {
    "full": BenchPreset(train_per_class=500, test_per_class=1000, epochs=2, image_size=64),
    "quick": BenchPreset(train_per_class=200, test_per_class=200, epochs=2, image_size=64),
}


@dataclass
class BenchConfig:
    """One benchmark run: data, split, methods, and the training settings they share."""

    data: str = "fashion-mnist"
    tasks: int = 5
    methods: Sequence[str] = ("janus", "inflora", "lora-gpm", "seq-lora", "joint", "frozen")
    preset: str | BenchPreset = "full"
    seed: int = 0
    train_overrides: dict[str, Any] = field(default_factory=dict)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    def with_ablations(self) -> BenchConfig:
        extra = [m for m in ABLATIONS if m not in self.methods]
        return replace(self, methods=(*self.methods, *extra))


def _preset(cfg: BenchConfig) -> BenchPreset:
    if isinstance(cfg.preset, BenchPreset):
        return cfg.preset
    try:
        return PRESETS[cfg.preset]
    except KeyError:
        raise ValueError(
            f"unknown preset {cfg.preset!r}; choose one of {', '.join(PRESETS)}"
        ) from None


def initial_state(cfg: BenchConfig) -> LearnerState:
    """The empty state every method of the run starts from: the backbone at the preset's size."""
    backbone = cfg.backbone.model_copy(update={"input_size": _preset(cfg).image_size})
    return LearnerState(backbone, cfg.lora)


def load_split(cfg: BenchConfig) -> list[Task]:
    """The task sequence: Fashion-MNIST (train/test files) or a labeled batch at a path, every
    image at the preset's side (resized once, as the service resizes)."""
    preset = _preset(cfg)
    side = preset.image_size
    test: LabeledBatch | None
    if cfg.data == "fashion-mnist":
        train = load_fashion_mnist(split="train")
        test = limit_per_class(load_fashion_mnist(split="test"), preset.test_per_class, cfg.seed)
        test = test.resized(side)
    else:
        train, test = load_batch(Path(cfg.data), image_size=side), None
    train = limit_per_class(train, preset.train_per_class, cfg.seed).resized(side)
    return class_incremental_split(train, test, tasks=cfg.tasks, seed=cfg.seed)


def _union(tasks: Sequence[Task]) -> LabeledBatch:
    """All tasks' training data as one batch (the joint upper bound only)."""
    names = tuple(n for t in tasks for n in t.class_names)
    offset, labels = 0, []
    for t in tasks:
        labels.append(t.train.labels + offset)
        offset += len(t.class_names)
    return LabeledBatch(
        np.concatenate([t.train.images for t in tasks]), np.concatenate(labels), names
    )


def run_method(
    name: str,
    tasks: Sequence[Task],
    cfg: BenchConfig,
    on_task: Callable[[str, int], ProgressFn | None] = lambda _m, _t: None,
) -> dict[str, Any]:
    """Learn the task sequence with one method; its accuracy matrix and timings."""
    train_cfg = _train_config(cfg, name)
    state = initial_state(cfg)
    sizes = [len(t.test) for t in tasks]
    train_s, steps, step_total = 0.0, 0.0, 0.0
    if train_cfg.method.joint:
        result = learn_task(state, _union(tasks), train_cfg, on_task(name, 0))
        row = [evaluate(result.model, t.test, result.state.class_names) for t in tasks]
        acc = sum(a * n for a, n in zip(row, sizes, strict=True)) / sum(sizes)
        m = result.metrics
        return {
            "acc": acc, "maa": None, "bwt": None, "matrix": [row], "acc_per_task": [acc],
            "train_s": m["train_s"], "step_s": m["step_s"], "steps": m["steps"],
        }  # fmt: skip
    matrix = AccuracyMatrix(task_sizes=sizes)
    for t, task in enumerate(tasks):
        result = learn_task(state, task.train, train_cfg, on_task(name, t))
        state = result.state
        matrix.add_row(
            [evaluate(result.model, tasks[i].test, state.class_names) for i in range(t + 1)]
        )
        train_s += result.metrics["train_s"]
        steps += result.metrics["steps"]
        step_total += result.metrics["step_s"] * result.metrics["steps"]
    summary = matrix.summary()
    return {
        **summary,
        "train_s": train_s,
        "step_s": step_total / steps if steps else None,  # None: nothing trained (frozen)
        "steps": steps,
    }


def run_benchmark(
    cfg: BenchConfig,
    out: Path,
    on_task: Callable[[str, int], ProgressFn | None] = lambda _m, _t: None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every method of `cfg` on one split and write the reports under `out`."""
    for name in cfg.methods:
        get_method(name)  # fail before any training on a misspelt method
    torch.manual_seed(cfg.seed)
    tasks = load_split(cfg)
    log(f"{len(tasks)} tasks: " + "; ".join(", ".join(t.class_names) for t in tasks))
    results: dict[str, Any] = {"methods": {}, "config": _describe(cfg, tasks)}
    for name in cfg.methods:
        t0 = time.perf_counter()
        res = run_method(name, tasks, cfg, on_task)
        results["methods"][name] = res
        log(
            f"{name}: ACC {res['acc']:.2f}  BWT "
            + ("n/a" if res["bwt"] is None else f"{res['bwt']:.2f}")
            + ("" if res["step_s"] is None else f"  step {1000 * res['step_s']:.0f} ms")
            + f"  ({time.perf_counter() - t0:.0f} s)"
        )
        write_results(results, out)  # partial results survive an interrupted run
    return results


def _train_config(cfg: BenchConfig, method: str) -> TrainConfig:
    """The preset's settings, then the run's overrides, for one method.

    An override `method.<field>` changes that field of every method's config (e.g.
    `method.head=prototype`); the others are `TrainConfig` fields.
    """
    settings: dict[str, Any] = {"epochs": _preset(cfg).epochs, "seed": cfg.seed}
    method_fields: dict[str, Any] = {}
    for key, value in cfg.train_overrides.items():
        if key.startswith("method."):
            method_fields[key.removeprefix("method.")] = value
        else:
            settings[key] = value
    base = get_method(method)
    spec = MethodConfig.model_validate({**base.model_dump(), **method_fields})
    return TrainConfig(method=spec, lora=cfg.lora, **settings)


def _describe(cfg: BenchConfig, tasks: Sequence[Task]) -> dict[str, Any]:
    preset = _preset(cfg)
    train_cfg = _train_config(cfg, "janus")
    return {
        "data": cfg.data,
        "tasks": [list(t.class_names) for t in tasks],
        "train_sizes": [len(t.train) for t in tasks],
        "test_sizes": [len(t.test) for t in tasks],
        "preset": cfg.preset if isinstance(cfg.preset, str) else "custom",
        **{f"preset_{k}": v for k, v in preset.__dict__.items()},
        "seed": cfg.seed,
        "backbone": cfg.backbone.model_dump(),
        "train": train_cfg.model_dump(exclude={"method"}),
        "method_overrides": {
            k: v for k, v in cfg.train_overrides.items() if k.startswith("method.")
        },
        "torch_threads": torch.get_num_threads(),
    }


def run_step_benchmark(
    cfg: BenchConfig,
    rounds: int = 5,
    baseline: str = "seq-lora",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Step time of every method of `cfg`, interleaved so machine noise falls on all alike.

    Each method first learns task 1 (so protected methods have a basis and DML old prototypes);
    then, `rounds` times, every method learns task 2 from that state for one epoch, in an order
    that rotates each round. A method's step time is the median over rounds of its mean step;
    the ratio is against the baseline's median from the same run.

    Returns:
        `{"methods": {name: {"step_s", "samples_s", "ratio"}}, "baseline", "rounds", "config"}`.
    """
    names = list(dict.fromkeys([baseline, *cfg.methods]))
    configs = {name: _train_config(cfg, name).model_copy(update={"epochs": 1}) for name in names}
    for name, train_cfg in configs.items():
        if not train_cfg.method.adapt:
            raise ValueError(f"method {name!r} trains nothing, so it has no step time; drop it")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    torch.manual_seed(cfg.seed)
    tasks = load_split(cfg)
    if len(tasks) < 2:
        raise ValueError("the step benchmark needs at least 2 tasks; raise --tasks")
    empty = initial_state(cfg)
    warm = {name: learn_task(empty, tasks[0].train, c).state for name, c in configs.items()}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            step_s = learn_task(warm[name], tasks[1].train, configs[name]).metrics["step_s"]
            samples[name].append(step_s)
        log(
            f"round {r + 1}/{rounds}: "
            + ", ".join(f"{n} {1000 * s[-1]:.0f} ms" for n, s in samples.items())
        )
    medians = {name: float(np.median(s)) for name, s in samples.items()}
    return {
        "methods": {
            name: {
                "step_s": medians[name],
                "samples_s": samples[name],
                "ratio": medians[name] / medians[baseline],
            }
            for name in names
        },
        "baseline": baseline,
        "rounds": rounds,
        "config": _describe(cfg, tasks),
    }
