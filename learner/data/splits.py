"""Splits of a labeled batch: a stratified hold-out, a per-class cap, and class-incremental tasks.

`class_incremental_split` cuts a dataset into T tasks of k new classes each, the protocol behind
the accuracy matrix of DESIGN.md §3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from learner.data.batch import DataError, LabeledBatch
from learner.data.files import Batch


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def holdout_mask(
    labels: np.ndarray, class_names: Sequence[str], fraction: float, seed: int
) -> np.ndarray:
    """Which samples a stratified hold-out takes (bool (N,)); deterministic under ``seed``.

    Each class gives ``round(fraction · n_c)`` samples to the hold-out, at least one and at most
    ``n_c − 1``, so every class keeps a training sample and appears in the hold-out.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"holdout fraction must lie strictly between 0 and 1, got {fraction}")
    rng = _rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label, name in enumerate(class_names):
        idx = np.flatnonzero(labels == label)
        if len(idx) < 2:
            raise DataError(
                f"class {name!r} has {len(idx)} sample(s); a held-out split needs at least 2 per "
                "class; add samples or pass a separate test batch"
            )
        n_hold = min(max(1, round(fraction * len(idx))), len(idx) - 1)
        mask[rng.permutation(idx)[:n_hold]] = True
    return mask


def holdout_split(batch: Batch, fraction: float, seed: int) -> tuple[Batch, Batch]:
    """Stratified split into (train, holdout) by `holdout_mask`."""
    mask = holdout_mask(batch.labels, batch.class_names, fraction, seed)
    return batch.subset(~mask), batch.subset(mask)


def per_class_limit(batch: Batch, n: int, seed: int) -> Batch:
    """Keeps at most ``n`` samples per class, chosen deterministically under ``seed``."""
    if n < 1:
        raise DataError(f"per-class limit must be at least 1, got {n}")
    rng = _rng(seed)
    keep: list[np.ndarray] = []
    for label in range(batch.num_classes):
        idx = np.flatnonzero(batch.labels == label)
        keep.append(rng.permutation(idx)[:n] if len(idx) > n else idx)
    chosen = np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
    return batch.subset(chosen)


@dataclass(frozen=True, eq=False)
class Task:
    """One step of a class-incremental stream.

    Attributes:
        index: position in the stream, from 0.
        class_names: the task's new classes; local label i means ``class_names[i]``.
        train: training samples of these classes only, labels 0..k-1.
        test: test samples of these classes only, labels 0..k-1.
    """

    index: int
    class_names: tuple[str, ...]
    train: Batch
    test: Batch


def class_incremental_split(
    train: Batch,
    test: Batch | None,
    *,
    tasks: int,
    seed: int,
    holdout: float = 0.2,
    class_order: Sequence[str] | None = None,
) -> list[Task]:
    """Cuts a dataset into ``tasks`` tasks of ``k = n_classes / tasks`` new classes each.

    Args:
        train: the training batch.
        test: a test batch with (at least) the same class names; None holds out ``holdout`` of
            each class of ``train`` instead.
        tasks: number of tasks T; must divide the number of classes.
        seed: shuffles the class order (unless ``class_order``) and the holdout.
        holdout: fraction of each class held out when ``test`` is None.
        class_order: explicit class order (a subset of the classes is allowed).
    """
    if class_order is None:
        order = [train.class_names[i] for i in _rng(seed).permutation(train.num_classes)]
    else:
        order = list(class_order)
        unknown = [n for n in order if n not in train.class_names]
        if unknown:
            raise DataError(
                f"class_order names {unknown}, which the training batch lacks; "
                f"choose among {list(train.class_names)}"
            )
        if len(set(order)) != len(order):
            raise DataError(f"class_order repeats a class: {order}")
    n = len(order)
    if tasks < 1 or n < tasks or n % tasks:
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        raise DataError(
            f"{n} classes cannot be split into {tasks} tasks of equal size; pass a number of "
            f"tasks that divides {n}: one of {divisors}"
        )
    if (
        isinstance(test, LabeledBatch)
        and isinstance(train, LabeledBatch)
        and test.images.shape[1:] != train.images.shape[1:]
    ):
        raise DataError(
            f"test images are {test.images.shape[1:]} (H, W, C) but training images are "
            f"{train.images.shape[1:]}; load both with the same image_size"
        )
    k = n // tasks
    out: list[Task] = []
    for t in range(tasks):
        names = tuple(order[t * k : (t + 1) * k])
        task_train = train.select_classes(names)
        if test is None:
            task_train, task_test = holdout_split(task_train, holdout, seed=_seed(seed, t))
        else:
            missing = [c for c in names if c not in test.class_names]
            if missing:
                raise DataError(
                    f"the test batch lacks classes {missing} of task {t}; give it the same "
                    "class names as the training batch, or pass no test batch to hold out "
                    "part of the training data"
                )
            task_test = test.select_classes(names)
        empty = [c for c, m in task_train.counts().items() if m == 0]
        if empty:
            raise DataError(f"task {t}: classes {empty} have no training samples")
        if len(task_test) == 0:
            raise DataError(f"task {t}: the test batch has no samples of classes {list(names)}")
        out.append(Task(t, names, task_train, task_test))
    return out


def _seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])
