"""One call learns one task: (state, labeled batch, config) → (new state, metrics).

A task reads as its three phases (DESIGN.md §3, 'Methods in one code path'): task start
(`_start_task`: A designed from the new inputs, or random), the step loop (`_train`: the factors
move by the method's update rule, `learner.updates`), task end (`_finish_task`: interference
measured, ΔW merged, class statistics, basis growth, head). The method config switches the
parts: how A starts, whether A M = 0 is kept, Online Estimation or an extra pass at task end,
the update rule, and the Decoupled Margin Loss. Only the current task's factors and new head
rows train; the backbone stays in eval mode (BatchNorm statistics and dropout frozen). Nothing
here knows Celery or the store.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from learner.config import TrainConfig
from learner.data import Batch
from learner.device import Precision, autocast
from learner.head import (
    ClassStatistics,
    cosine_head,
    cosine_logits,
    fit_temperature,
    linear_logits,
)
from learner.inputs import prepare
from learner.janus.estimation import (
    CovarianceAccumulator,
    SubspaceState,
    design_a,
    expand_basis,
    random_a,
)
from learner.janus.margin import (
    class_prototypes,
    data_margins,
    decoupled_margin_loss,
    invasion_share,
)
from learner.loader import EpochOrder, default_workers, in_order, pixel_batches
from learner.lora.layer import LoRALayer
from learner.lora.model import get_factors
from learner.state import ContinualModel, LearnerState, build_model
from learner.updates import make_update_rule


@dataclass(frozen=True)
class Progress:
    """Where a task's training stands (phase: design, train, finalize)."""

    phase: str
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    samples_per_s: float
    eta_s: float


ProgressFn = Callable[[Progress], None]


@dataclass
class TaskResult:
    """A learned task: the new state, its training metrics, and the merged working model."""

    state: LearnerState
    metrics: dict[str, float]
    model: ContinualModel
    layer_violation: dict[str, float] = field(default_factory=dict)  # by layer, NaN: task 1


class TrainingCancelled(RuntimeError):
    """Raised by a progress callback to stop a task cooperatively; nothing is published."""


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@torch.no_grad()
def extract_features(
    model: ContinualModel,
    images: torch.Tensor,
    batch_size: int = 256,
    precision: Precision = "fp32",
) -> torch.Tensor:
    """Pre-logit features (N, d), float32 on the model's device, of uint8 images (N, C, S, S) at
    the model side, no augmentation; the images move to the device a batch at a time, and the
    forward runs at `precision` (`learner.device.autocast`)."""
    side = model.spec.size
    out = [
        _features(model, prepare(images[s], side), precision)
        for s in _chunks(len(images), batch_size)
    ]
    return torch.cat(out) if out else torch.zeros(0, model.num_features, device=model.device)


def _features(model: ContinualModel, pixels: torch.Tensor, precision: Precision) -> torch.Tensor:
    """Features (B, d), float32 on the model's device, of prepared pixels (B, 3, S, S) on the
    CPU: moved to the device, the forward at `precision`."""
    x = pixels.to(model.device, non_blocking=True)
    with autocast(model.device, precision):
        return model.features(x).float()


FEATURE_PIXELS = 1 << 21
"""Pixels per no-grad forward on the CPU: its activations, not the images, set the memory of
feature passes (256 images at 224 px took about 1.4 GB more than 32 did, even for a tiny net)."""


def feature_batch_size(side: int, device: torch.device) -> int:
    """Images per no-grad forward: 256 on an accelerator; on the CPU as many as fit
    `FEATURE_PIXELS` (256 up to 90 px, 41 at 224 px), at least 1."""
    if device.type != "cpu":
        return 256
    return max(1, min(256, FEATURE_PIXELS // (side * side)))


@torch.no_grad()
def batch_features(
    model: ContinualModel,
    batch: Batch,
    indices: torch.Tensor | None = None,
    *,
    precision: Precision = "fp32",
    workers: int = 0,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Pre-logit features (P, d), float32 on the model's device, of the batch's images at
    `indices` (all by default) in that order, no augmentation; a batch on disk is read by
    `workers` processes a batch at a time (`learner.loader`). `batch_size` defaults to
    `feature_batch_size`."""
    side = model.spec.size
    batch_size = batch_size or feature_batch_size(side, model.device)
    picked = torch.arange(len(batch)) if indices is None else indices
    loader = pixel_batches(
        batch, side, in_order(picked, batch_size), device=model.device, workers=workers
    )
    out = [_features(model, prepare(images, side), precision) for images, _ in loader]
    return torch.cat(out) if out else torch.zeros(0, model.num_features, device=model.device)


@torch.no_grad()
def predict_logits(
    model: ContinualModel, images: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Logits (N, C) over every seen class for uint8 images (N, C, S, S) at the model's side."""
    return model.head(extract_features(model, images, batch_size))


def evaluate(model: ContinualModel, batch: Batch, seen: list[str], workers: int = 0) -> float:
    """Accuracy (percent) of argmax over all seen classes on a batch whose classes are in `seen`
    (on disk: read by `workers` processes)."""
    index = {name: i for i, name in enumerate(seen)}
    try:
        target = torch.tensor([index[batch.class_names[int(y)]] for y in batch.labels])
    except KeyError as exc:
        raise ValueError(f"class {exc.args[0]!r} of the test batch was never learned") from None
    with torch.no_grad():
        pred = model.head(batch_features(model, batch, workers=workers)).argmax(dim=1).cpu()
    return 100.0 * (pred == target).float().mean().item()


def _attach_accumulators(
    model: ContinualModel, max_tokens: int, generator: torch.Generator
) -> dict[str, CovarianceAccumulator]:
    accs = {}
    for name, layer in model.layers.items():
        accs[name] = CovarianceAccumulator(
            layer.in_features, max_tokens, generator, device=layer.lora_A.device
        )
        layer.observer = accs[name]
    return accs


def _detach_accumulators(model: ContinualModel) -> None:
    for layer in model.layers.values():
        layer.observer = None


def _balanced_pick(
    labels: torch.Tensor, num_classes: int, total: int, generator: torch.Generator
) -> torch.Tensor:
    """Up to `total` indices, as many per class as fit, in random order (every class present)."""
    per_class = max(total // num_classes, 1)
    picks = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        picks.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    return torch.cat(picks)


def _check_new_classes(state: LearnerState, batch: Batch) -> None:
    known = set(state.class_names) & set(batch.class_names)
    if known:
        raise ValueError(
            f"classes {sorted(known)} are already learned; a task must bring only new classes "
            "(class-incremental) — rename or drop those class folders"
        )
    if len(batch) == 0:
        raise ValueError("the labeled batch is empty; give at least one image per class")
    if state.num_tasks and state.class_stats is None:
        raise ValueError(
            "this version was published before the learner kept class statistics, so a new task "
            "cannot extend its head; learn its tasks again from an empty store"
        )


@dataclass(frozen=True)
class Streams:
    """Independent random streams of one task: `data` (order, augmentation, design picks)
    draws the same numbers for every method, `method` (random A, OE token subsampling) varies
    with it, so an ablation never changes the data a task sees."""

    data: torch.Generator
    method: torch.Generator

    @classmethod
    def for_task(cls, seed: int, task: int) -> Streams:
        data, method = np.random.SeedSequence([seed, task]).spawn(2)
        return cls(
            *(torch.Generator().manual_seed(int(s.generate_state(1)[0])) for s in (data, method))
        )


@dataclass
class _Task:
    """One task's working set: the model, its data (in memory at the model's side, or files read
    by `workers` processes), the protected bases."""

    state: LearnerState
    batch: Batch
    cfg: TrainConfig
    model: ContinualModel
    labels: torch.Tensor  # (N,) local 0..k-1
    old_sub: dict[str, SubspaceState]  # every layer's subspace before the task (CPU)
    bases: dict[str, torch.Tensor]  # M (n, k) per layer on the device; (n, 0) if unprotected
    streams: Streams
    precision: Precision = "fp32"
    workers: int = 0

    @property
    def device(self) -> torch.device:
        return self.model.device

    def features(self, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Features (P, d) on the device of the images at `indices` (all by default)."""
        return batch_features(
            self.model, self.batch, indices, precision=self.precision, workers=self.workers
        )

    @property
    def k_new(self) -> int:
        return len(self.batch.class_names)


def learn_task(
    state: LearnerState,
    batch: Batch,
    cfg: TrainConfig,
    progress: ProgressFn | None = None,
    device: torch.device | str = "cpu",
    precision: Precision = "fp32",
    workers: int | None = None,
) -> TaskResult:
    """Learn the classes of `batch` as a new task on top of `state`: task start, the step loop,
    task end, on `device` (`learner.device.resolve_device`), the forward at `precision`. A batch
    in memory stays on the CPU as uint8 and moves a batch at a time; a batch on disk
    (`FileBatch`) is read by `workers` processes (default `learner.loader.default_workers`) a
    few batches ahead, decoded at the model's side, and never held whole. The new state is on the
    CPU, in float32, whatever the device and precision; the data's order and augmentation do not
    depend on where the images are or how many workers read them.

    Returns:
        The new state (the old one is not modified), training metrics and the working model
        with the task merged and the head grown. Metrics: start_s, train_s, end_s (seconds of
        the three phases; the end holds the extra pass of methods without OE), step_s (mean
        seconds per optimisation step), steps, loss, basis_dims (basis columns over all layers),
        head_temperature (the LDA head's fitted temperature, 1 for the cosine heads),
        violation and drift (means over layers of `interference`: the relative output change
        on the protected subspace and on all earlier inputs; per layer in
        `TaskResult.layer_violation`; NaN on the first task) and invasion (the share of
        the task's features inside an old class's region, `learner.janus.margin`; NaN on the
        first task).
    """
    _check_new_classes(state, batch)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed * 7919 + state.num_tasks)
    model = build_model(state).to(device)
    old_sub = {
        name: state.subspace.get(name) or SubspaceState.empty(layer.in_features)
        for name, layer in model.layers.items()
    }
    task = _Task(
        state=state,
        batch=batch,
        cfg=cfg,
        model=model,
        labels=torch.from_numpy(batch.labels).long(),
        old_sub=old_sub,
        bases={
            name: (sub.basis if cfg.method.protect else torch.zeros(sub.basis.shape[0], 0)).to(
                device
            )
            for name, sub in old_sub.items()
        },
        streams=Streams.for_task(cfg.seed, state.num_tasks),
        precision=precision,
        workers=default_workers() if workers is None else workers,
    )
    report = progress or (lambda _p: None)
    report(Progress("design", 0, cfg.epochs, 0, 0, math.nan, 0.0, math.nan))
    t0 = time.perf_counter()
    head_w = _start_task(task)
    start_s = time.perf_counter() - t0
    run = _train(task, head_w, report) if cfg.method.adapt else _Run(0, [], math.nan, 0.0, {})
    report(Progress("finalize", cfg.epochs, cfg.epochs, run.steps, run.steps, run.loss, 0, 0))
    t1 = time.perf_counter()
    result = _finish_task(task, head_w, run)
    result.metrics["start_s"] = start_s
    result.metrics["end_s"] = time.perf_counter() - t1
    return result


def _start_task(task: _Task) -> nn.Parameter:
    """Task start: A for every layer, and the new classes' head rows (returned, trainable).

    One no-grad pass over ≤ design_samples images (balanced over the new classes) gives C_new
    for A = top-r eigenvectors of Q C_new Q, and the new classes' mean features that initialise
    their head rows (imprinting, ours). The fallback A is a Gaussian A·Q.
    """
    cfg, model, gens = task.cfg, task.model, task.streams
    pick = _balanced_pick(task.labels, task.k_new, cfg.design_samples, gens.data)
    design = cfg.method.a_init == "design"
    accs = _attach_accumulators(model, cfg.oe_max_tokens, gens.method) if design else {}
    init_feats = task.features(pick)  # (P, d)
    _detach_accumulators(model)
    for name, layer in model.layers.items():
        if design:
            a = design_a(task.bases[name], accs[name].covariance(), layer.rank)
        else:
            a = random_a(task.bases[name], layer.in_features, layer.rank, gens.method)
        layer.reset_factors(a)
    protos = class_prototypes(init_feats.cpu(), task.labels[pick], task.k_new)  # (k, d)
    return nn.Parameter(protos.to(task.device))


@dataclass
class _Run:
    """What the step loop leaves: steps, step times, last loss, seconds, OE accumulators."""

    steps: int
    step_times: list[float]
    loss: float
    train_s: float
    online: dict[str, CovarianceAccumulator]


def _train(task: _Task, head_w: nn.Parameter, report: ProgressFn) -> _Run:
    """The step loop: cross-entropy on the task's own classes (+ λ·DML against old classes),
    the head rows by Adam, the factors by the method's update rule (`learner.updates`)."""
    cfg, model, method = task.cfg, task.model, task.cfg.method
    rule = make_update_rule(
        method.update,
        model.layers,
        task.bases,
        lr=cfg.lr,
        gr_lr=cfg.gr_lr,
        weight_decay=cfg.weight_decay,
        damping=cfg.damping,
        train_a=method.train_a,
    )
    head_opt = torch.optim.Adam([head_w], lr=cfg.head_lr)
    stats = task.state.class_stats
    old_protos: torch.Tensor | None = None  # (C_old, d): what DML pushes away from
    margins: torch.Tensor = torch.tensor(math.nan)
    if method.margin_loss and stats is not None and stats.num_classes > 0:
        assert task.state.prototypes is not None  # stored with the class statistics
        old_protos = task.state.prototypes.to(task.device)  # normalize(stats.means)
        margins = data_margins(stats) if cfg.dml_margin is None else torch.tensor(cfg.dml_margin)
        margins = margins.to(task.device)
    online = method.protect and method.online_estimation
    accs = _attach_accumulators(model, cfg.oe_max_tokens, task.streams.method) if online else {}

    order = EpochOrder(len(task.labels), cfg.batch_size, task.streams.data)  # a new one per epoch
    loader = pixel_batches(
        task.batch,
        model.spec.size,
        order,
        device=task.device,
        workers=task.workers,
        keep_workers=True,
    )
    total_steps = cfg.epochs * len(order)
    step, loss_value, step_times = 0, math.nan, []
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        for images, labels in loader:  # uint8 (B, C, S, S), (B,) on the CPU
            t0 = time.perf_counter()
            images = images.to(task.device, non_blocking=True)
            x = prepare(images, model.spec.size, cfg.augment, task.streams.data)  # on the device
            feats = _features(model, x, task.precision)  # (B, d); OE observers add XᵀX here
            target = labels.to(task.device, non_blocking=True)
            loss = F.cross_entropy(cosine_logits(feats, head_w), target)
            if old_protos is not None:
                loss = loss + cfg.dml_lambda * decoupled_margin_loss(feats, old_protos, margins)
            head_opt.zero_grad(set_to_none=True)
            rule.zero_grad()
            loss.backward()
            head_opt.step()
            rule.step()
            step += 1
            step_times.append(time.perf_counter() - t0)
            loss_value = float(loss.detach())
            elapsed = time.perf_counter() - start
            report(
                Progress(
                    "train",
                    epoch + 1,
                    cfg.epochs,
                    step,
                    total_steps,
                    loss_value,
                    step * cfg.batch_size / elapsed,
                    (total_steps - step) * elapsed / step,
                )
            )
    train_s = time.perf_counter() - start
    _detach_accumulators(model)
    rule.release()
    return _Run(step, step_times, loss_value, train_s, accs)


def _relative_change(delta: torch.Tensor, w: torch.Tensor, cov: torch.Tensor) -> float:
    """`√(tr(ΔW C ΔWᵀ) / tr(W C Wᵀ))` (DESIGN.md §3, 'Interference'), NaN when the base is 0.

    With C the second moment of some inputs, this is the root-mean-square change of the layer's
    output on those inputs relative to the output itself, from the statistics alone.
    """
    moved = torch.sum((delta @ cov) * delta).item()  # tr(ΔW C ΔWᵀ)
    base = torch.sum((w @ cov) * w).item()  # tr(W C Wᵀ)
    return math.sqrt(max(moved, 0.0) / base) if base > 0 else math.nan


def interference(layer: LoRALayer, sub: SubspaceState, basis: torch.Tensor) -> tuple[float, float]:
    """(violation, drift) of the layer's current task against earlier tasks' inputs.

    violation: the output change on the protected subspace, C_M = P C P with P = M Mᵀ and C the
    running covariance (zero when ΔW M = 0); NaN for a method that protects nothing. Computed as
    `tr((ΔW M)(MᵀCM)(ΔW M)ᵀ)`, the same trace without forming the n×n products.
    drift: the output change on all earlier inputs, C itself (the energy outside span(M),
    1 − ε, is left unprotected by design). Both NaN before any input was observed.
    """
    if sub.count == 0:
        return math.nan, math.nan
    cov = sub.covariance  # (n, n) float64
    r0, r1 = layer.rows
    delta = layer.get_delta_weight().detach().double().cpu()  # (m, n)
    w = layer.weight_2d[r0:r1].double().cpu()  # (m, n), before the merge
    drift = _relative_change(delta, w, cov)
    if basis.shape[1] == 0:
        return math.nan, drift
    m = basis.double().cpu()  # (n, k)
    return _relative_change(delta @ m, w @ m, m.T @ cov @ m), drift  # (m, k), (m, k), (k, k)


def _finish_task(task: _Task, head_w: nn.Parameter, run: _Run) -> TaskResult:
    """Task end: interference, merge ΔW into the fp32 working weights, class statistics and
    prototypes, the new basis (or the extra pass for it), then the head."""
    state, cfg, model, method = task.state, task.cfg, task.model, task.cfg.method
    layers, labels, k_new = model.layers, task.labels, task.k_new
    measured = {n: interference(ly, task.old_sub[n], task.bases[n]) for n, ly in layers.items()}
    factors = get_factors(layers)
    for layer in layers.values():
        layer.merge()
    post = {} if run.online else _attach_accumulators(model, cfg.oe_max_tokens, task.streams.method)
    feats = task.features().cpu()  # (N, d); the extra pass of the methods without OE rides on it
    _detach_accumulators(model)
    old_stats = state.class_stats or ClassStatistics.empty(model.num_features)
    stats = old_stats.added(feats, labels, k_new)
    prototypes = F.normalize(stats.means, dim=-1).float()  # (C + k, d)

    subspace: dict[str, SubspaceState] = {}
    eps = cfg.eps_for_task(state.num_tasks)
    for name in layers:  # the running S, N over all tasks; the basis grows if protected
        acc = run.online.get(name) or post[name]
        old = task.old_sub[name]
        running = SubspaceState(
            old.basis, old.second_moment + acc.second_moment.cpu(), old.count + acc.count
        )
        if method.protect:
            cov = running.covariance if method.running_covariance else acc.covariance().cpu()
            running.basis = expand_basis(old.basis, cov, eps).float()
        subspace[name] = running

    temperature = 1.0
    if method.head == "lda":
        head_weight, head_bias = stats.lda_head(cfg.head_shrinkage)  # every row, from the stats
        offset = len(state.class_names)
        temperature = fit_temperature(linear_logits(feats, head_weight, head_bias), labels + offset)
        head_weight, head_bias = head_weight / temperature, head_bias / temperature
    else:  # cosine rows: the new classes' prototypes or their trained rows
        rows = prototypes[-k_new:] if method.head == "prototype" else head_w.detach().cpu()
        new_w, new_b = cosine_head(rows)
        head_weight = torch.cat([model.head_weight.cpu(), new_w])  # (C + k, d)
        head_bias = torch.cat([model.head_bias.cpu(), new_b])
    new_state = LearnerState(
        backbone=state.backbone,
        lora=state.lora,
        class_names=[*state.class_names, *task.batch.class_names],
        task_sizes=[*state.task_sizes, k_new],
        adapters=[*state.adapters, factors],
        head_weight=head_weight,
        head_bias=head_bias,
        subspace=subspace,
        prototypes=prototypes,
        class_stats=stats,
    )
    timed = run.step_times[2:] if len(run.step_times) > 4 else run.step_times
    metrics = {
        "train_s": run.train_s,
        "step_s": sum(timed) / max(len(timed), 1),
        "steps": float(run.steps),
        "loss": run.loss,
        "basis_dims": float(sum(s.basis.shape[1] for s in subspace.values())),
        "head_temperature": temperature,
        "violation": _finite_mean([v for v, _ in measured.values()]),
        "drift": _finite_mean([d for _, d in measured.values()]),
        "invasion": invasion_share(feats, old_stats),
    }
    model.head_weight, model.head_bias = head_weight.to(task.device), head_bias.to(task.device)
    violation = {name: v for name, (v, _) in measured.items()}
    return TaskResult(new_state, metrics, model.eval(), violation)


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
