"""One call learns one task: (state, labeled batch, config) → (new state, metrics).

The loop is the same for every method (DESIGN.md §3, 'Methods in one code path'); the method
config switches its parts: how A starts (design / random), whether A M = 0 is kept, Online
Estimation or an extra pass at task end, Gradient Rectification or plain Adam on the factors,
and the Decoupled Margin Loss. Only the current task's factors and new head rows train; the
backbone stays in eval mode (BatchNorm statistics and dropout frozen). Nothing here knows Celery
or the store.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from learner.config import TrainConfig
from learner.data import LabeledBatch
from learner.head import (
    ClassStatistics,
    cosine_head,
    cosine_logits,
    fit_temperature,
    linear_logits,
)
from learner.inputs import prepare, to_uint8_tensor
from learner.janus.estimation import (
    CovarianceAccumulator,
    SubspaceState,
    design_a,
    expand_basis,
    project_out,
    random_a,
)
from learner.janus.margin import class_prototypes, decoupled_margin_loss
from learner.janus.rectification import GradientRectifier
from learner.lora.model import get_factors
from learner.state import ContinualModel, LearnerState, build_model


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


class TrainingCancelled(RuntimeError):
    """Raised by a progress callback to stop a task cooperatively; nothing is published."""


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


@torch.no_grad()
def extract_features(
    model: ContinualModel, images: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Pre-logit features (N, d) of uint8 images (N, C, S, S) at the model side, no augmentation."""
    side = model.spec.size
    out = [model.features(prepare(images[s], side)) for s in _chunks(len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, model.num_features)


@torch.no_grad()
def predict_logits(
    model: ContinualModel, images: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Logits (N, C) over every seen class for uint8 images (N, C, S, S) at the model's side."""
    return model.head(extract_features(model, images, batch_size))


def evaluate(model: ContinualModel, batch: LabeledBatch, seen: list[str]) -> float:
    """Accuracy (percent) of argmax over all seen classes on a batch whose classes are in `seen`."""
    index = {name: i for i, name in enumerate(seen)}
    try:
        target = torch.tensor([index[batch.class_names[int(y)]] for y in batch.labels])
    except KeyError as exc:
        raise ValueError(f"class {exc.args[0]!r} of the test batch was never learned") from None
    pixels = to_uint8_tensor(batch.resized(model.spec.size).images)  # (N, C, S, S)
    pred = predict_logits(model, pixels).argmax(dim=1)
    return 100.0 * (pred == target).float().mean().item()


def _attach_accumulators(
    model: ContinualModel, max_tokens: int, generator: torch.Generator
) -> dict[str, CovarianceAccumulator]:
    accs = {}
    for name, layer in model.layers.items():
        accs[name] = CovarianceAccumulator(layer.in_features, max_tokens, generator)
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


def _check_new_classes(state: LearnerState, batch: LabeledBatch) -> None:
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


def learn_task(
    state: LearnerState,
    batch: LabeledBatch,
    cfg: TrainConfig,
    progress: ProgressFn | None = None,
) -> TaskResult:
    """Learn the classes of `batch` as a new task on top of `state`.

    Returns:
        The new state (the old one is not modified), training metrics (train_s, step_s: mean
        seconds per optimisation step, steps, loss, basis_dims: basis columns over all layers,
        head_temperature: the LDA head's fitted temperature, 1 for the cosine heads)
        and the working model with the task merged and the head grown.
    """
    _check_new_classes(state, batch)
    method, task = cfg.method, state.num_tasks
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed * 7919 + task)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + task)
    report = progress or (lambda _p: None)

    model = build_model(state)
    layers = model.layers
    images = to_uint8_tensor(batch.resized(model.spec.size).images)  # (N, C, S, S) uint8
    labels = torch.from_numpy(batch.labels).long()  # (N,) local 0..k-1
    n, k_new = len(labels), len(batch.class_names)

    old_sub = {
        name: state.subspace.get(name) or SubspaceState.empty(layer.in_features)
        for name, layer in layers.items()
    }
    bases = {
        name: old_sub[name].basis if method.protect else torch.zeros(layer.in_features, 0)
        for name, layer in layers.items()
    }

    # Task start: one no-grad pass over ≤ design_samples images (balanced over the new classes)
    # gives C_new for A = top-r eigenvectors of Q C_new Q, and the new classes' mean features
    # that initialise their head rows (imprinting, ours). The fallback A is a Gaussian A·Q.
    report(Progress("design", 0, cfg.epochs, 0, 0, math.nan, 0.0, math.nan))
    pick = _balanced_pick(labels, k_new, cfg.design_samples, gen)
    design = method.a_init == "design"
    design_accs = _attach_accumulators(model, cfg.oe_max_tokens, gen) if design else {}
    init_feats = extract_features(model, images[pick])  # (P, d)
    _detach_accumulators(model)
    for name, layer in layers.items():
        if design:
            a = design_a(bases[name], design_accs[name].covariance(), layer.rank)
        else:
            a = random_a(bases[name], layer.in_features, layer.rank, gen)
        layer.reset_factors(a)

    # What trains: the new head rows and the current factors (through GR or Adam).
    head_w = nn.Parameter(class_prototypes(init_feats, labels[pick], k_new))  # (k, d)
    head_opt = torch.optim.Adam([head_w], lr=cfg.head_lr)
    rectifier: GradientRectifier | None = None
    lora_opt: torch.optim.Optimizer | None = None
    if method.rectify:
        rectifier = GradientRectifier(layers, bases, lr=cfg.gr_lr, damping=cfg.damping)
    else:
        params: list[nn.Parameter] = []
        for layer in layers.values():
            layer.lora_A.requires_grad_(method.train_a)
            layer.lora_B.requires_grad_(True)
            params += [layer.lora_A, layer.lora_B] if method.train_a else [layer.lora_B]
        lora_opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    old_protos = state.prototypes if method.margin_loss and state.prototypes is not None else None
    online = method.protect and method.online_estimation
    accs = _attach_accumulators(model, cfg.oe_max_tokens, gen) if online else {}

    steps_per_epoch = math.ceil(n / cfg.batch_size)
    epochs = cfg.epochs if method.adapt else 0
    total_steps = epochs * steps_per_epoch
    step, loss_value, step_times = 0, math.nan, []
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        for sl in _chunks(n, cfg.batch_size):
            t0 = time.perf_counter()
            idx = order[sl]
            x = prepare(images[idx], model.spec.size, augment=cfg.augment, generator=gen)
            feats = model.features(x)  # (B, d); OE observers add XᵀX here
            logits = cosine_logits(feats, head_w)  # (B, k): this task's only
            loss = F.cross_entropy(logits, labels[idx])
            if old_protos is not None:
                loss = loss + cfg.dml_lambda * decoupled_margin_loss(
                    feats, old_protos, cfg.dml_margin
                )
            head_opt.zero_grad(set_to_none=True)
            if rectifier is not None:
                rectifier.zero_grad()
            if lora_opt is not None:
                lora_opt.zero_grad(set_to_none=True)
            loss.backward()
            head_opt.step()
            if rectifier is not None:
                rectifier.step()
            elif lora_opt is not None:
                lora_opt.step()
                if method.protect:
                    with torch.no_grad():
                        for name, layer in layers.items():  # A's step projected by Q
                            layer.lora_A.copy_(project_out(layer.lora_A, bases[name].float()))
            step += 1
            step_times.append(time.perf_counter() - t0)
            loss_value = float(loss.detach())
            elapsed = time.perf_counter() - start
            rate = step * cfg.batch_size / elapsed
            report(
                Progress(
                    "train",
                    epoch + 1,
                    cfg.epochs,
                    step,
                    total_steps,
                    loss_value,
                    rate,
                    (total_steps - step) * elapsed / step,
                )
            )
    train_s = time.perf_counter() - start
    _detach_accumulators(model)
    if rectifier is not None:
        rectifier.release()

    # Task end: merge ΔW into the fp32 working weights, class statistics and prototypes, the new
    # basis, then the head.
    report(Progress("finalize", cfg.epochs, cfg.epochs, step, total_steps, loss_value, 0.0, 0.0))
    factors = get_factors(layers)
    for layer in layers.values():
        layer.merge()
        layer.lora_A.requires_grad_(False)
        layer.lora_B.requires_grad_(False)
    post = (
        {} if online or not method.protect else _attach_accumulators(model, cfg.oe_max_tokens, gen)
    )
    feats = extract_features(model, images)  # (N, d); the extra pass of no-OE methods rides here
    _detach_accumulators(model)
    stats = (state.class_stats or ClassStatistics.empty(model.num_features)).added(
        feats, labels, k_new
    )
    prototypes = F.normalize(stats.means, dim=-1).float()  # (C + k, d)

    subspace: dict[str, SubspaceState] = {}
    if method.protect:
        eps = cfg.eps_for_task(task)
        for name in layers:
            acc = accs.get(name) or post[name]
            old = old_sub[name]
            running = SubspaceState(  # running S, N over all tasks
                old.basis, old.second_moment + acc.second_moment, old.count + acc.count
            )
            cov = running.covariance if method.running_covariance else acc.covariance()
            running.basis = expand_basis(old.basis, cov, eps).float()
            subspace[name] = running

    temperature = 1.0
    if method.head == "lda":
        head_weight, head_bias = stats.lda_head(cfg.head_shrinkage)  # every row, from the stats
        offset = len(state.class_names)
        temperature = fit_temperature(linear_logits(feats, head_weight, head_bias), labels + offset)
        head_weight, head_bias = head_weight / temperature, head_bias / temperature
    else:  # cosine rows: the new classes' prototypes or their trained rows
        new_w, new_b = cosine_head(prototypes[-k_new:] if method.head == "prototype" else head_w)
        head_weight = torch.cat([model.head_weight, new_w.detach()])  # (C + k, d)
        head_bias = torch.cat([model.head_bias, new_b])
    new_state = LearnerState(
        backbone=state.backbone,
        lora=state.lora,
        class_names=[*state.class_names, *batch.class_names],
        task_sizes=[*state.task_sizes, k_new],
        adapters=[*state.adapters, factors],
        head_weight=head_weight,
        head_bias=head_bias,
        subspace=subspace,
        prototypes=prototypes,
        class_stats=stats,
    )
    timed = step_times[2:] if len(step_times) > 4 else step_times
    metrics = {
        "train_s": train_s,
        "step_s": sum(timed) / max(len(timed), 1),
        "steps": float(step),
        "loss": loss_value,
        "basis_dims": float(sum(s.basis.shape[1] for s in subspace.values())),
        "head_temperature": temperature,
    }
    model.head_weight, model.head_bias = head_weight, head_bias
    return TaskResult(new_state, metrics, model.eval())
