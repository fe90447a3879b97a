"""Class-incremental benchmark: every method on the same split in one run (`janus bench cl`).

A run is an experiment: every method on the same class orders (`seeds`), each method's step
size first chosen on a validation split carved from each task's training data (`tune`), the
test images used for nothing but the reported figures. Writes `results.json` (`{"methods":
{name: {acc, maa, bwt (means over seeds), acc_std, maa_std, bwt_std, violation, vs_janus,
tuned, runs, ...}}, "config"}`, accuracies in percent), `results.md` and the plots of
`learner.metrics`. `janus bench step`
(`run_step_benchmark`) measures only step times, with the methods interleaved.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learner.config import BackboneConfig, LoRAConfig, MethodConfig, TrainConfig
from learner.data import (
    Batch,
    DataError,
    Task,
    class_incremental_split,
    concatenate,
    holdout_split,
    load_batch,
    load_fashion_mnist,
)
from learner.data import per_class_limit as limit_per_class
from learner.data.cifar100 import find_cifar100, load_cifar100
from learner.data.paper import LAYOUTS as PAPER_LAYOUTS
from learner.data.paper import detect as detect_paper_dataset
from learner.data.paper import load_paper_dataset
from learner.device import Precision, resolve_device
from learner.methods import ABLATIONS, BASELINES, get_method
from learner.metrics import AccuracyMatrix, mean_std, search_summary, write_results
from learner.state import LearnerState
from learner.train import ProgressFn, evaluate, learn_task


@dataclass(frozen=True)
class BenchPreset:
    """How much data and training a benchmark run uses, and (paper presets) with what.

    Attributes:
        train_per_class, test_per_class: images kept per class (None: all of them).
        epochs: epochs per task.
        image_size: the model's side; images are resized to it (a paper preset's data is
            resized a batch at a time when read, never held at that side).
        dataset: the data format the preset is for (`learner.data.paper`, "cifar100"); None:
            any `--data`.
        tasks: tasks the classes are split into (unless the run says).
        backbone, lora: the model (unless the run says); None: the run's default.
        train: `TrainConfig` settings under the run's `--set` overrides.
        quick: the preset `--quick` turns it into (`SHRINK`: this one, smaller).
    """

    train_per_class: int | None
    test_per_class: int | None
    epochs: int
    image_size: int
    dataset: str | None = None
    tasks: int = 5
    backbone: BackboneConfig | None = None
    lora: LoRAConfig | None = None
    train: Mapping[str, Any] = field(default_factory=dict)
    quick: str | None = None


PAPER_BACKBONE = BackboneConfig(
    name="vit_base_patch16_224.augreg_in21k", weights="hub", input_size=224
)
"""ViT-B/16 pretrained on ImageNet-21K (timm's weights from the hub, or `--backbone-file`)."""


SHRINK = "shrink"
"""A preset's `quick` that means: itself, with 8 training and 4 test images per class, 1 epoch."""


def _paper(dataset: str, tasks: int, epochs: int) -> BenchPreset:
    """The Janus-LoRA paper's setting (InfLoRA's configs): ViT-B/16 in21k at 224 px, LoRA rank 10
    on K and V (the ViT default targets), Adam at 5e-4, batch 128; all the data."""
    return BenchPreset(
        train_per_class=None,
        test_per_class=None,
        epochs=epochs,
        image_size=224,
        dataset=dataset,
        tasks=tasks,
        backbone=PAPER_BACKBONE,
        lora=LoRAConfig(rank=10, alpha=10),
        train={"lr": 5e-4, "gr_lr": 5e-4, "batch_size": 128},
        quick=SHRINK,
    )


PRESETS = {
    "cl": BenchPreset(300, 500, 3, 28, quick="quick"),
    "quick": BenchPreset(100, 200, 2, 28),
    "fashion-64": BenchPreset(500, 1000, 2, 64, quick="quick"),
    "paper-cifar100": _paper("cifar100", tasks=10, epochs=20),
    "paper-imagenet-r": _paper("imagenet-r", tasks=10, epochs=50),
    "paper-imagenet-r-20": _paper("imagenet-r", tasks=20, epochs=50),
    "paper-domainnet": _paper("domainnet", tasks=5, epochs=5),
    "paper-imagenet100": _paper("imagenet100", tasks=10, epochs=20),
}
"""`cl` (the default): Fashion-MNIST at its own 28×28, where the ImageNet backbone's frozen
features leave adaptation room (joint − frozen is about 14 ACC points); `quick`: the same in
minutes; `fashion-64`: the images upsampled to 64 px, the first benchmark's setting, where the
frozen backbone comes within about 3 points of joint. `paper-*`: the paper's benchmarks and
settings (epochs as InfLoRA's configs: 20 on CIFAR-100, 50 on ImageNet-R, 5 on DomainNet; 20 on
ImageNet-100 is ours), for `--data` the user has; `--quick` keeps their model and format but
trains 8 images per class for one epoch (a check that everything runs, not a result)."""


def quick_preset(preset: BenchPreset) -> BenchPreset:
    """What `--quick` runs for a preset: `quick` for the Fashion-MNIST ones; for a paper preset,
    the same data format and model with 8 training and 4 test images per class, one epoch."""
    if preset.quick == SHRINK:
        return replace(preset, train_per_class=8, test_per_class=4, epochs=1, quick=None)
    return PRESETS[preset.quick] if preset.quick else preset


@dataclass
class BenchConfig:
    """One benchmark run: data, split, methods, seeds, and the training settings they share."""

    data: str = "fashion-mnist"
    methods: Sequence[str] = BASELINES
    preset: str | BenchPreset = "cl"
    seed: int = 0
    seeds: int = 1
    tune: bool = True
    step_grid: Sequence[float] = (1 / 3, 1.0, 3.0)
    search_extensions: int = 1
    """Times a search may step past the grid's edge when the edge candidate wins."""
    dml_grid: Sequence[float] = (0.0, 1 / 3, 1.0)
    """Factors of the default DML weight λ searched, after the step size, for methods with DML
    (0: without DML); empty: no search."""
    val_fraction: float = 0.2
    chosen: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Step sizes chosen before (`{method: tuned}` from an earlier results.json): reused, not
    searched again."""
    train_overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    """`auto`, `cpu` or `cuda[:N]` (`learner.device.resolve_device`)."""
    precision: Precision = "fp32"
    """The frozen forward's precision, `fp32` or `bf16` (`learner.device.autocast`)."""
    jobs: int = 1
    """Sequence runs at once: 1 runs them here (progress shown); more run in that many worker
    processes, each with its share of the cores' threads (`--threads` sets them instead)."""
    quick: bool = False
    """Run the preset's quick version (`quick_preset`)."""
    tasks_override: int | None = None
    backbone_override: BackboneConfig | None = None
    lora_override: LoRAConfig | None = None
    loader_workers: int = 0
    """Reader processes of data on disk (the paper presets' image folders)."""

    @property
    def tasks(self) -> int:
        """Tasks the classes are split into: the run's, else the preset's."""
        return self.tasks_override or _preset(self).tasks

    @property
    def backbone(self) -> BackboneConfig:
        """The run's backbone, else the preset's, else EfficientNet-Lite0 (offline weights)."""
        return self.backbone_override or _preset(self).backbone or BackboneConfig()

    @property
    def lora(self) -> LoRAConfig:
        """The run's LoRA settings, else the preset's, else the default (rank 8)."""
        return self.lora_override or _preset(self).lora or LoRAConfig()

    def with_ablations(self) -> BenchConfig:
        extra = [m for m in ABLATIONS if m not in self.methods]
        return replace(self, methods=(*self.methods, *extra))

    @property
    def seed_list(self) -> list[int]:
        """The class orders run: `seeds` consecutive seeds from `seed`."""
        return [self.seed + i for i in range(self.seeds)]


def _preset(cfg: BenchConfig) -> BenchPreset:
    if isinstance(cfg.preset, BenchPreset):
        preset = cfg.preset
    elif cfg.preset in PRESETS:
        preset = PRESETS[cfg.preset]
    else:
        raise ValueError(f"unknown preset {cfg.preset!r}; choose one of {', '.join(PRESETS)}")
    return quick_preset(preset) if cfg.quick else preset


def initial_state(cfg: BenchConfig) -> LearnerState:
    """The empty state every method of the run starts from: the backbone at the preset's size."""
    backbone = cfg.backbone.model_copy(update={"input_size": _preset(cfg).image_size})
    return LearnerState(backbone, cfg.lora)


@dataclass(frozen=True)
class Split:
    """One class order: `test` tasks (fit on the training part, scored on the test images) and
    `val` tasks (the same training part, scored on a validation part carved from each task's
    training data). Nothing is ever chosen on `test`."""

    seed: int
    test: list[Task]
    val: list[Task]


def load_split(cfg: BenchConfig, seed: int | None = None) -> Split:
    """The task sequence under one class order: Fashion-MNIST, CIFAR-100 binary or a paper's
    image-folder benchmark (`learner.data.paper`; their own train/test files or split), or a
    labeled batch at a path (test images held out of it). Images are at the preset's side:
    resized once here, except a paper preset's, which are resized when read (on disk: decoded)."""
    seed = cfg.seed if seed is None else seed
    preset = _preset(cfg)
    side = preset.image_size
    train, test = _load_data(cfg, preset, seed)
    if test is not None and preset.test_per_class is not None:
        test = limit_per_class(test, preset.test_per_class, seed)
    if preset.train_per_class is not None:
        train = limit_per_class(train, preset.train_per_class, seed)
    if preset.dataset is None:  # small images: held at the side
        train, test = train.resized(side), None if test is None else test.resized(side)
    tasks = class_incremental_split(train, test, tasks=cfg.tasks, seed=seed)
    test_tasks, val_tasks = [], []
    for t in tasks:
        fit, val = holdout_split(t.train, cfg.val_fraction, seed=seed * 1009 + t.index)
        test_tasks.append(replace(t, train=fit))
        val_tasks.append(replace(t, train=fit, test=val))
    return Split(seed, test_tasks, val_tasks)


def _load_data(cfg: BenchConfig, preset: BenchPreset, seed: int) -> tuple[Batch, Batch | None]:
    """(train, test or None) of `--data`, in the format the preset needs if it names one."""
    side = preset.image_size
    if cfg.data == "fashion-mnist" and preset.dataset is None:
        return load_fashion_mnist(split="train"), load_fashion_mnist(split="test")
    cifar = find_cifar100(cfg.data)
    kind = "cifar100" if cifar is not None else detect_paper_dataset(cfg.data)
    if preset.dataset is not None and kind != preset.dataset:
        raise DataError(
            f"preset {cfg.preset} needs {preset.dataset} data: pass --data with its folder "
            f"({PAPER_LAYOUTS[preset.dataset]}); {cfg.data} is "
            f"{'not a benchmark folder' if kind is None else kind}"
        )
    if cifar is not None:
        return load_cifar100(cifar, "train"), load_cifar100(cifar, "test")
    if kind is not None:
        _, train, test = load_paper_dataset(cfg.data, side=side, seed=seed)
        return train, test
    return load_batch(Path(cfg.data), image_size=side), None


def _union(tasks: Sequence[Task]) -> Batch:
    """All tasks' training data as one batch (the joint upper bound only)."""
    return concatenate([t.train for t in tasks])


def run_method(
    name: str,
    tasks: Sequence[Task],
    cfg: BenchConfig,
    on_task: Callable[[str, int], ProgressFn | None] = lambda _m, _t: None,
    *,
    seed: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Learn the task sequence with one method; its accuracy matrix, interference and timings.

    Returns:
        `acc`, `maa`, `bwt`, `matrix`, `acc_per_task`, `violation` and `drift` (means over
        tasks 2.. and layers, `learner.train.interference`), `layer_violation` (per layer, mean
        over tasks 2..), `invasion`, `train_s`,
        `step_s`, `steps`.
    """
    train_cfg = _train_config(cfg, name, seed=seed, overrides=overrides)
    state = initial_state(cfg)
    sizes = [len(t.test) for t in tasks]
    device, workers = resolve_device(cfg.device), cfg.loader_workers
    if train_cfg.method.joint:
        result = learn_task(
            state, _union(tasks), train_cfg, on_task(name, 0), device, cfg.precision, workers
        )
        row = [evaluate(result.model, t.test, result.state.class_names, workers) for t in tasks]
        acc = sum(a * n for a, n in zip(row, sizes, strict=True)) / sum(sizes)
        m = result.metrics
        return {
            "acc": acc, "maa": None, "bwt": None, "matrix": [row], "acc_per_task": [acc],
            "violation": None, "drift": None, "layer_violation": {}, "invasion": None,
            "train_s": m["train_s"], "step_s": m["step_s"], "steps": m["steps"],
        }  # fmt: skip
    matrix = AccuracyMatrix(task_sizes=sizes)
    train_s, steps, step_total = 0.0, 0.0, 0.0
    violations: list[float] = []
    drifts: list[float] = []
    invasions: list[float] = []
    per_layer: dict[str, list[float]] = {}
    for t, task in enumerate(tasks):
        result = learn_task(
            state, task.train, train_cfg, on_task(name, t), device, cfg.precision, workers
        )
        state = result.state
        matrix.add_row(
            [
                evaluate(result.model, tasks[i].test, state.class_names, workers)
                for i in range(t + 1)
            ]
        )
        train_s += result.metrics["train_s"]
        steps += result.metrics["steps"]
        step_total += result.metrics["step_s"] * result.metrics["steps"]
        if t > 0:
            violations.append(result.metrics["violation"])
            drifts.append(result.metrics["drift"])
            invasions.append(result.metrics["invasion"])
            for layer, v in result.layer_violation.items():
                per_layer.setdefault(layer, []).append(v)
    return {
        **matrix.summary(),
        "violation": _mean(violations),
        "drift": _mean(drifts),
        "layer_violation": {k: _mean(v) for k, v in per_layer.items()},
        "invasion": _mean(invasions),
        "train_s": train_s,
        "step_s": step_total / steps if steps else None,  # None: nothing trained (frozen)
        "steps": steps,
    }


def _mean(values: Sequence[float | None]) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _std(values: Sequence[float | None]) -> float | None:
    """Sample standard deviation (ddof 1) over seeds; None with fewer than two."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return float(np.std(finite, ddof=1)) if len(finite) > 1 else None


def step_size_key(method: str, cfg: BenchConfig | None = None) -> str | None:
    """The TrainConfig field that sets a method's step size (with `cfg`'s `method.*` overrides
    applied, e.g. `--set method.update=gr`); None when it trains nothing."""
    spec = _train_config(cfg, method).method if cfg is not None else get_method(method)
    if not spec.adapt:
        return None
    return "gr_lr" if spec.update == "gr" else "lr"


def step_size_grid(name: str, cfg: BenchConfig) -> tuple[str, list[float]] | None:
    """The step-size search of a method: its setting's key and the candidate values (its
    default times each of `cfg.step_grid`); None for a method that trains nothing or when a
    `--set` fixes the step size for every method."""
    key = step_size_key(name, cfg)
    if key is None or key in cfg.train_overrides:
        return None
    default = float(_train_config(cfg, name).model_dump()[key])
    return key, [float(f"{default * factor:.3g}") for factor in sorted(cfg.step_grid)]


def _best_value(search: list[dict[str, float]]) -> float:
    """The candidate with the best validation ACC (the smaller value on a tie)."""
    return max(search, key=lambda r: (r["val_acc"], -r["value"]))["value"]


def _choose(key: str, search: list[dict[str, float]]) -> dict[str, Any]:
    """`{"key", "value", "search"}`: the best candidate (`_best_value`), the search by value."""
    return {
        "key": key,
        "value": _best_value(search),
        "search": sorted(search, key=lambda r: r["value"]),
    }


def _beyond_the_edge(search: list[dict[str, float]], grid: Sequence[float]) -> float | None:
    """When the best candidate is the smallest or the largest tried, the next value past it
    (the grid's own spacing); None when the best lies inside."""
    if len(search) < 2:
        return None
    factors = sorted(grid)
    values = sorted(r["value"] for r in search)
    best = _best_value(search)
    if best == values[0]:
        return float(f"{best * factors[0] / factors[1]:.3g}")
    if best == values[-1]:
        return float(f"{best * factors[-1] / factors[-2]:.3g}")
    return None


def tune_step_size(
    name: str,
    split: Split,
    cfg: BenchConfig,
    on_task: Callable[[str, int], ProgressFn | None] = lambda _m, _t: None,
) -> dict[str, Any]:
    """A method's step size chosen on the validation tasks (`_search_step_sizes`), here.

    Returns:
        `{"key", "value", "search": [{"value", "val_acc"}]}`, plus `"dml_lambda": {"value",
        "search"}` for a method with DML; `{}` for a method that trains nothing or when a
        `--set` fixes the step size for every method.
    """
    one = replace(cfg, methods=(name,), jobs=1, chosen={}, tune=True)
    with _Runner(one, on_task) as runner:
        return _search_step_sizes(one, split, runner, lambda _s: None)[name]


def _search_step_sizes(
    cfg: BenchConfig, split: Split, runner: _Runner, log: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """Every method's step size chosen on `split`'s validation tasks (`tuned` by method).

    A method's candidates are its default times each of `cfg.step_grid`; while the best is the
    smallest or the largest tried, one more value past it is tried, at most
    `cfg.search_extensions` times. All methods' candidates of a round run at once.
    """
    tuned: dict[str, dict[str, Any]] = {name: cfg.chosen.get(name, {}) for name in cfg.methods}
    grids = {}
    for name in cfg.methods:
        grid = step_size_grid(name, cfg) if cfg.tune and name not in cfg.chosen else None
        if grid is not None:
            grids[name] = grid
    searches: dict[str, list[dict[str, float]]] = {name: [] for name in grids}
    todo = {name: values for name, (_key, values) in grids.items()}
    for extension in range(cfg.search_extensions + 1):
        futures = {
            name: [(v, runner.submit(name, split.val, split.seed, {grids[name][0]: v})) for v in vs]
            for name, vs in todo.items()
        }
        todo = {}
        for name, candidates in futures.items():
            searches[name] += [{"value": v, "val_acc": f.result()["acc"]} for v, f in candidates]
            nxt = _beyond_the_edge(searches[name], cfg.step_grid)
            if nxt is not None and extension < cfg.search_extensions:
                todo[name] = [nxt]
    for name in searches:
        tuned[name] = _choose(grids[name][0], searches[name])
    _search_dml_weight(cfg, split, runner, tuned, searches)
    for name in cfg.methods:
        if tuned[name]:
            tried = [r["value"] for r in tuned[name]["search"]]
            edge = len(tried) > 1 and tuned[name]["value"] in (min(tried), max(tried))
            log(
                f"{name}: {tuned[name]['key']} {tuned[name]['value']:g} chosen on validation ("
                + search_summary(tuned[name]["search"])
                + ")"
                + (" in an earlier run" if name in cfg.chosen else "")
                + (", at the edge of the search" if edge else "")
            )
        if "dml_lambda" in tuned[name]:
            dml = tuned[name]["dml_lambda"]
            log(
                f"{name}: dml_lambda {dml['value']:g} chosen on validation ("
                + search_summary(dml["search"])
                + ")"
            )
    return tuned


def _search_dml_weight(
    cfg: BenchConfig,
    split: Split,
    runner: _Runner,
    tuned: dict[str, dict[str, Any]],
    searches: dict[str, list[dict[str, float]]],
) -> None:
    """For methods with DML: its weight λ chosen on validation at the chosen step size, from
    the default times each of `cfg.dml_grid` (the default's score is the step-size search's);
    the smaller λ wins a tie. Adds `tuned[name]["dml_lambda"] = {"value", "search"}`."""
    if not cfg.dml_grid or "dml_lambda" in cfg.train_overrides:
        return
    futures = {}
    for name in searches:
        if not get_method(name).margin_loss:
            continue
        default = _train_config(cfg, name).dml_lambda
        step = {tuned[name]["key"]: tuned[name]["value"]}
        values = sorted({float(f"{default * f:.3g}") for f in cfg.dml_grid} - {default})
        futures[name] = (
            default,
            [
                (v, runner.submit(name, split.val, split.seed, {**step, "dml_lambda": v}))
                for v in values
            ],
        )
    for name, (default, candidates) in futures.items():
        at_default = next(r for r in searches[name] if r["value"] == tuned[name]["value"])
        search = [{"value": default, "val_acc": at_default["val_acc"]}]
        search += [{"value": v, "val_acc": f.result()["acc"]} for v, f in candidates]
        best = _choose("dml_lambda", search)
        tuned[name]["dml_lambda"] = {"value": best["value"], "search": best["search"]}


def chosen_settings(tuned: Mapping[str, Any]) -> dict[str, Any]:
    """The training settings a method's search chose (`tuned` of results.json), as overrides."""
    if not tuned:
        return {}
    settings = {tuned["key"]: tuned["value"]}
    if "dml_lambda" in tuned:
        settings["dml_lambda"] = tuned["dml_lambda"]["value"]
    return settings


class _Runner:
    """Runs `run_method` calls here, one after the other (`cfg.jobs` 1: progress shown), or in
    `cfg.jobs` spawned worker processes; `submit` gives a future either way."""

    def __init__(self, cfg: BenchConfig, on_task: Callable[[str, int], ProgressFn | None]):
        self.cfg, self.on_task = cfg, on_task
        self.pool: ProcessPoolExecutor | None = None
        if cfg.jobs > 1:
            self.pool = ProcessPoolExecutor(
                cfg.jobs,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=torch.set_num_threads,
                initargs=(_job_threads(cfg.jobs),),
            )

    def submit(
        self, name: str, tasks: Sequence[Task], seed: int, overrides: Mapping[str, Any]
    ) -> Future[dict[str, Any]]:
        if self.pool is not None:
            return self.pool.submit(
                run_method, name, tasks, self.cfg, seed=seed, overrides=overrides
            )
        done: Future[dict[str, Any]] = Future()
        done.set_result(
            run_method(name, tasks, self.cfg, self.on_task, seed=seed, overrides=overrides)
        )
        return done

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _job_threads(jobs: int) -> int:
    """Torch threads of each of `jobs` worker processes: their share of the cores."""
    return max(1, _cores() // jobs)


def default_jobs(device: str = "cpu") -> int:
    """`janus bench cl`'s default parallelism: on the CPU one sequence run per core, at most 4;
    on a CUDA device one (the runs would share the accelerator)."""
    return 1 if resolve_device(device).type == "cuda" else min(_cores(), 4)


def run_benchmark(
    cfg: BenchConfig,
    out: Path,
    on_task: Callable[[str, int], ProgressFn | None] = lambda _m, _t: None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every method of `cfg` over `cfg.seeds` class orders, each method's step size chosen
    first on the validation split of the first order; reports written under `out`.

    Runs in two rounds, each as parallel as `cfg.jobs` allows: every method's step-size search,
    then every method's runs over the class orders with the step size it chose.
    """
    for name in cfg.methods:
        get_method(name)  # fail before any training on a misspelt method
    if cfg.jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {cfg.jobs}")
    resolve_device(cfg.device)  # a device this machine lacks fails here, in one line
    t0 = time.perf_counter()
    splits = [load_split(cfg, seed) for seed in cfg.seed_list]
    for split in splits:
        log(f"seed {split.seed}: " + "; ".join(", ".join(t.class_names) for t in split.test))
    results: dict[str, Any] = {"methods": {}, "config": _describe(cfg, splits[0].test)}
    with _Runner(cfg, on_task) as runner:
        tuned = _search_step_sizes(cfg, splits[0], runner, log)
        pending = {
            name: [
                runner.submit(name, s.test, s.seed, chosen_settings(tuned[name])) for s in splits
            ]
            for name in cfg.methods
        }
        for name, futures in pending.items():
            runs = [{"seed": s.seed, **f.result()} for s, f in zip(splits, futures, strict=True)]
            res = _aggregate(runs)
            res["tuned"] = tuned[name]
            results["methods"][name] = res
            log(
                f"{name}: ACC {mean_std(res, 'acc')}  BWT {mean_std(res, 'bwt')}"
                + ("" if res["violation"] is None else f"  violation {res['violation']:.2e}")
                + ("" if res["step_s"] is None else f"  step {1000 * res['step_s']:.0f} ms")
            )
            _paired_to_janus(results["methods"])
            results["wall_s"] = time.perf_counter() - t0
            write_results(results, out)  # partial results survive an interrupted run
    wall_min = (time.perf_counter() - t0) / 60
    log(f"{len(cfg.methods)} methods in {wall_min:.1f} min with {cfg.jobs} job(s)")
    return results


def chosen_step_sizes(results_json: Path) -> dict[str, dict[str, Any]]:
    """The step sizes an earlier run chose, by method (`tuned` of its results.json)."""
    import json

    try:
        methods = json.loads(results_json.read_text())["methods"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(
            f"cannot read chosen step sizes from {results_json}: {exc}; give the results.json "
            "of an earlier `janus bench cl` run"
        ) from None
    return {name: m["tuned"] for name, m in methods.items() if m.get("tuned")}


_AVERAGED = ("acc", "maa", "bwt", "violation", "drift", "invasion", "train_s", "step_s", "steps")


def _aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One method's runs over seeds: means (and std of acc, maa, bwt, violation), the first
    seed's matrix, the mean accuracy after each task, the per-layer violation, every run."""
    out: dict[str, Any] = {k: _mean([r[k] for r in runs]) for k in _AVERAGED}
    for k in ("acc", "maa", "bwt", "violation"):
        out[f"{k}_std"] = _std([r[k] for r in runs])
    out["matrix"] = runs[0]["matrix"]
    out["task_sizes"] = runs[0].get("task_sizes")
    out["acc_per_task"] = [float(v) for v in np.mean([r["acc_per_task"] for r in runs], axis=0)]
    layers = runs[0]["layer_violation"]
    out["layer_violation"] = {k: _mean([r["layer_violation"].get(k) for r in runs]) for k in layers}
    out["runs"] = [{k: v for k, v in r.items() if k != "layer_violation"} for r in runs]
    return out


def _paired_to_janus(methods: dict[str, dict[str, Any]]) -> None:
    """Adds `vs_janus` to every method: mean ± std over seeds of (method − janus), paired by
    seed, for acc and bwt."""
    janus = methods.get("janus")
    if janus is None:
        return
    by_seed = {r["seed"]: r for r in janus["runs"]}
    for name, m in methods.items():
        if name == "janus":
            continue
        paired: dict[str, Any] = {}
        for key in ("acc", "bwt"):
            diffs = [
                r[key] - by_seed[r["seed"]][key]
                for r in m["runs"]
                if r["seed"] in by_seed
                and r[key] is not None
                and by_seed[r["seed"]][key] is not None
            ]
            paired[key] = _mean(diffs)
            paired[f"{key}_std"] = _std(diffs)
        m["vs_janus"] = paired


def _train_config(
    cfg: BenchConfig,
    method: str,
    *,
    seed: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """The preset's settings, then the run's overrides, then the tuned ones, for one method.

    An override `method.<field>` changes that field of every method's config (e.g.
    `method.head=prototype`); the others are `TrainConfig` fields.
    """
    settings: dict[str, Any] = {
        **_preset(cfg).train,
        "epochs": _preset(cfg).epochs,
        "seed": cfg.seed if seed is None else seed,
    }
    method_fields: dict[str, Any] = {}
    for key, value in {**cfg.train_overrides, **(overrides or {})}.items():
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
        "quick": cfg.quick,
        **{
            f"preset_{k}": v
            for k, v in preset.__dict__.items()
            if k not in ("backbone", "lora", "train", "quick")  # below, as the run used them
        },
        "seeds": cfg.seed_list,
        "tune": cfg.tune,
        "chosen_before": sorted(cfg.chosen),
        "step_grid": list(cfg.step_grid),
        "search_extensions": cfg.search_extensions,
        "dml_grid": list(cfg.dml_grid),
        "val_fraction": cfg.val_fraction,
        "backbone": cfg.backbone.model_dump(),
        "lora": cfg.lora.model_dump(),
        "train": train_cfg.model_dump(exclude={"method"}),
        "method_overrides": {
            k: v for k, v in cfg.train_overrides.items() if k.startswith("method.")
        },
        "loader_workers": cfg.loader_workers,
        "torch_threads": torch.get_num_threads() if cfg.jobs == 1 else _job_threads(cfg.jobs),
        "jobs": cfg.jobs,
        "device": str(resolve_device(cfg.device)),
        "precision": cfg.precision,
    }


def run_step_benchmark(
    cfg: BenchConfig,
    rounds: int = 5,
    baseline: str = "seq-lora",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Step time of every method of `cfg`, interleaved so machine noise falls on all alike.

    Each method first learns task 1 (so protected methods have a basis and DML old prototypes);
    then, `rounds` times, every method learns task 2 from that state (the preset's epochs), in an
    order that rotates each round. A method's step time is the median over rounds of its mean
    step; the ratio is against the baseline's median from the same run. The task's phases are
    timed too (medians): task start (A's design), the step loop (OE rides in it), task end (the
    extra pass of methods without OE, basis growth, head).

    Returns:
        `{"methods": {name: {"step_s", "samples_s", "ratio", "start_s", "train_s", "end_s",
        "task_s", "task_ratio"}}, "baseline", "rounds", "config"}`.
    """
    names = list(dict.fromkeys([baseline, *cfg.methods]))
    configs = {name: _train_config(cfg, name) for name in names}
    for name, train_cfg in configs.items():
        if not train_cfg.method.adapt:
            raise ValueError(f"method {name!r} trains nothing, so it has no step time; drop it")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    tasks = load_split(cfg).test
    if len(tasks) < 2:
        raise ValueError("the step benchmark needs at least 2 tasks; raise --tasks")
    empty = initial_state(cfg)
    device = resolve_device(cfg.device)
    warm = {
        name: learn_task(empty, tasks[0].train, c, device=device, precision=cfg.precision).state
        for name, c in configs.items()
    }
    second = tasks[1].train
    phases = ("step_s", "start_s", "train_s", "end_s")
    samples: dict[str, dict[str, list[float]]] = {n: {p: [] for p in phases} for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            metrics = learn_task(
                warm[name], second, configs[name], device=device, precision=cfg.precision
            ).metrics
            for p in phases:
                samples[name][p].append(metrics[p])
        log(
            f"round {r + 1}/{rounds}: "
            + ", ".join(f"{n} {1000 * s['step_s'][-1]:.0f} ms" for n, s in samples.items())
        )
    med = {n: {p: float(np.median(v)) for p, v in s.items()} for n, s in samples.items()}
    task_s = {n: med[n]["start_s"] + med[n]["train_s"] + med[n]["end_s"] for n in names}
    return {
        "methods": {
            name: {
                **med[name],
                "samples_s": samples[name]["step_s"],
                "ratio": med[name]["step_s"] / med[baseline]["step_s"],
                "task_s": task_s[name],
                "task_ratio": task_s[name] / task_s[baseline],
            }
            for name in names
        },
        "baseline": baseline,
        "rounds": rounds,
        "config": _describe(cfg, tasks),
    }
