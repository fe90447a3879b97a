"""Safe promotion (DESIGN.md §6): a candidate evaluated against the serving version, and the gate.

A learn job sets aside up to `eval_per_class` of each new class's held-out images (never trained
on) as an evaluation set in the store. Before anything is activated, the candidate and the version
serving then both classify the union of the evaluation sets that cover their classes: the golden
sets users attached, the sets added along the candidate's lineage and the serving version's, and
the candidate's own. Each image counts for its class (argmax over all of a model's classes, as in
serving); a class the serving version does not know is *new*, one it knows is *old*.

The old classes' accuracy falls for two reasons: the candidate forgot them (its features or head
for them changed), or its new classes take some of their images (a new `shirt` class takes
t-shirts: the price of learning a class that looks like an old one). The second is measured apart
by letting the candidate choose among the old classes only (`old_accuracy_among_old`; its drop is
`forgetting`). The gate passes a candidate when its new-class held-out accuracy reaches
`gate_accuracy` (50 %), its old-class accuracy is at most `gate_max_old_drop` (10) points below
the serving version's on the same images, and its forgetting at most `gate_max_forgetting` (5)
points; a candidate that fails is published as rejected, with the reasons, and does not serve.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from adapters_store import Manifest, VersionStore
from adapters_store.evalsets import EvalImages, EvalSetInfo
from adapters_store.manifest import ClassScore, Evaluation, Gate
from learner.data import Batch, DataError, open_batch
from learner.data.files import FileBatch
from learner.data.images import pixels

if TYPE_CHECKING:  # torch only where models run: the service imports this module for golden sets
    from learner.state import ContinualModel

DECODE_CHUNK = 64
"""Evaluation images decoded and classified at once."""


def holdout_sample(holdout: Batch, per_class: int, seed: int) -> tuple[list[bytes], list[str]]:
    """Up to `per_class` images of each class of the held-out images, still encoded (a file's
    bytes as they are; an in-memory image as PNG), with their class names."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(holdout.class_names):
        idx = np.flatnonzero(holdout.labels == label)
        for i in sorted(rng.permutation(idx)[:per_class]):
            images.append(_encoded(holdout, int(i)))
            labels.append(name)
    return images, labels


def _encoded(batch: Batch, i: int) -> bytes:
    if isinstance(batch, FileBatch):
        return Path(batch.files[i]).read_bytes()
    image = batch.images[i]  # (H, W, C)
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def evaluation_images(
    store: VersionStore, versions: Sequence[str], own: Sequence[str], classes: set[str]
) -> tuple[EvalImages, list[str]]:
    """The images of the golden sets, the sets added along the lineages of `versions` and the
    sets in `own`, restricted to `classes`; and the digests of the sets they came from."""
    digests: list[str] = [s.digest for s in store.evalsets.sets() if s.kind == "golden"]
    for version in versions:
        for m in store.lineage(version):
            digests += m.evaluation.added if m.evaluation else []
    digests += own
    used, images, labels = [], [], []
    for digest in dict.fromkeys(digests):  # once each, in order
        found = store.evalsets.read(digest)
        keep = [i for i, label in enumerate(found.labels) if label in classes]
        if keep:
            used.append(digest)
            images += [found.images[i] for i in keep]
            labels += [found.labels[i] for i in keep]
    return EvalImages(tuple(images), tuple(labels)), used


def golden_set(store: VersionStore, path: Path, *, max_bytes: int, max_images: int) -> EvalSetInfo:
    """Attaches a user's evaluation set (a folder of class folders, or a zip or tar of one) to
    the store: its files kept as they are, never trained on."""
    if path.suffix.lower() == ".npz":
        raise DataError(
            f"{path}: an evaluation set keeps its images as encoded files; give a folder of "
            "class folders (<folder>/<class>/<image>.png) or an archive of one"
        )
    with open_batch(path, image_size=32, max_bytes=max_bytes) as batch:  # files: never resized
        if len(batch) > max_images:
            raise DataError(
                f"{path}: {len(batch)} images; an evaluation set holds at most {max_images} "
                "(sample it, or split it in several sets)"
            )
        images = [_encoded(batch, i) for i in range(len(batch))]
        labels = [batch.class_names[int(y)] for y in batch.labels]
    return store.evalsets.add(images, labels, kind="golden", source=str(path))


def logits(model: ContinualModel, images: EvalImages) -> np.ndarray:
    """A model's logits (N, C) over all its classes, each image decoded through the one image
    path at the model's side."""
    import torch

    from learner.train import predict_logits

    side, out = model.spec.size, []
    for start in range(0, len(images), DECODE_CHUNK):
        chunk = images.images[start : start + DECODE_CHUNK]
        decoded = [
            pixels(data, side, name=f"evaluation image {start + i}") for i, data in enumerate(chunk)
        ]
        rgb = np.stack([x if x.shape[-1] == 3 else np.repeat(x, 3, axis=-1) for x in decoded])
        x = torch.from_numpy(rgb).permute(0, 3, 1, 2)  # (B, 3, S, S) uint8
        with torch.no_grad():
            out.append(predict_logits(model, x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(model.head_bias)), np.float32)


def top_class(scores: np.ndarray, names: Sequence[str], among: set[str] | None = None) -> list[str]:
    """Each row's highest-scoring class (N,), over every class or only those `among`."""
    keep = [i for i, name in enumerate(names) if among is None or name in among]
    if not keep or not len(scores):
        return ["" for _ in range(len(scores))]
    best = np.asarray(keep)[np.argmax(scores[:, keep], axis=1)]  # (N,)
    return [names[int(i)] for i in best]


def _accuracy(hits: Sequence[bool]) -> float | None:
    return 100.0 * sum(hits) / len(hits) if hits else None


def compare(
    images: EvalImages,
    candidate: Sequence[str],
    candidate_among_old: Sequence[str],
    serving: Sequence[str] | None,
    serving_classes: set[str],
    new_classes: set[str],
) -> dict[str, object]:
    """Accuracies per class, on the new classes and on the old ones (the serving version's), of
    the candidate (choosing among all its classes, and among the old ones only) and of the
    serving version, from each image's predicted class."""
    per_class: dict[str, ClassScore] = {}
    for name in sorted(set(images.labels)):
        idx = [i for i, label in enumerate(images.labels) if label == name]
        mine = _accuracy([candidate[i] == name for i in idx])
        theirs = (
            _accuracy([serving[i] == name for i in idx])
            if serving is not None and name in serving_classes
            else None
        )
        per_class[name] = ClassScore(images=len(idx), accuracy=mine, serving_accuracy=theirs)
    labels = images.labels
    old = [i for i, label in enumerate(labels) if label in serving_classes]
    new = [i for i, label in enumerate(labels) if label in new_classes]
    return {
        "per_class": per_class,
        "new_accuracy": _accuracy([candidate[i] == labels[i] for i in new]),
        "old_accuracy": _accuracy([candidate[i] == labels[i] for i in old]),
        "old_accuracy_among_old": _accuracy([candidate_among_old[i] == labels[i] for i in old]),
        "old_accuracy_serving": (
            _accuracy([serving[i] == labels[i] for i in old]) if serving else None
        ),
    }


def gate(
    against: str | None,
    new_accuracy: float,
    old: tuple[float | None, float | None, float | None],
    min_new_accuracy: float,
    max_old_drop: float,
    max_forgetting: float,
) -> Gate:
    """The gate's verdict: new-class held-out accuracy at least `min_new_accuracy`; old-class
    accuracy at most `max_old_drop` points below the serving version's; and, choosing among the
    old classes only, at most `max_forgetting` points below it. `old` = (candidate, candidate
    among the old classes, serving version) on the old classes' images; None where there are
    none."""
    reasons = []
    if new_accuracy < min_new_accuracy:
        reasons.append(
            f"new-class held-out accuracy {new_accuracy:.1f} % is below the "
            f"{min_new_accuracy:g} % required (gate_accuracy)"
        )
    mine, among_old, theirs = old
    if mine is not None and theirs is not None and theirs - mine > max_old_drop:
        reasons.append(
            f"old-class accuracy fell {theirs - mine:.1f} points against {against} "
            f"({theirs:.1f} → {mine:.1f} %), more than the {max_old_drop:g} allowed "
            "(gate_max_old_drop)"
        )
    if among_old is not None and theirs is not None and theirs - among_old > max_forgetting:
        reasons.append(
            f"it forgot old classes: choosing among them only, their accuracy fell "
            f"{theirs - among_old:.1f} points against {against} ({theirs:.1f} → "
            f"{among_old:.1f} %), more than the {max_forgetting:g} allowed (gate_max_forgetting)"
        )
    return Gate(
        passed=not reasons,
        reasons=reasons,
        min_new_accuracy=min_new_accuracy,
        max_old_drop=max_old_drop,
        max_forgetting=max_forgetting,
    )


def evaluate_candidate(
    store: VersionStore,
    model: ContinualModel,
    classes: Sequence[str],
    new_classes: Sequence[str],
    *,
    parent: str | None,
    added: Sequence[str],
    serving_model: tuple[Manifest, ContinualModel] | None,
    holdout_accuracy_new: float,
    thresholds: tuple[float, float, float] | None,
) -> Evaluation:
    """The candidate (`model`, its `classes`) against the serving version (its manifest and
    model, if one serves) on the evaluation sets; `thresholds` (min new accuracy, max old drop,
    max forgetting) add the gate's verdict."""
    serving_classes = set(serving_model[0].classes) if serving_model else set()
    lineages = [v for v in (parent, serving_model[0].id if serving_model else None) if v]
    images, used = evaluation_images(store, lineages, added, set(classes) | serving_classes)
    scores = logits(model, images)  # (N, C)
    theirs = None
    if serving_model is not None:
        theirs = top_class(logits(serving_model[1], images), serving_model[0].classes)
    result = compare(
        images,
        top_class(scores, classes),
        top_class(scores, classes, among=serving_classes),
        theirs,
        serving_classes,
        set(new_classes),
    )
    against = serving_model[0].id if serving_model else None
    verdict = None
    if thresholds is not None:
        old = (
            result["old_accuracy"],
            result["old_accuracy_among_old"],
            result["old_accuracy_serving"],
        )
        verdict = gate(against, holdout_accuracy_new, old, *thresholds)  # type: ignore[arg-type]
    return Evaluation.model_validate(
        {"against": against, "sets": used, "added": list(added), "gate": verdict, **result}
    )
