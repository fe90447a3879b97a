"""Why the head matters: one method's task sequence, scored with several heads on the same features.

    .venv/bin/python docs/bench-cl/head_study.py --method janus --preset quick --threads 2 \
        [--set KEY=VALUE ...]

After each task, with that task's working model, every head below is built from statistics of the
tasks' training features *as they were measured at each task's end* (no old data) and scored on
the test sets of all tasks so far:

- `cosine`: rows at the classes' normalised mean features (the project's first head),
- `cosine-centred`: the same after subtracting the mean feature of everything seen (SimpleShot),
- `lda`: LDA with a shared, shrunk covariance on L2-normalised features (the project's head,
  `learner.head`).

At the end, two references use the old tasks' training data, which the learner never keeps:
`fresh` recomputes the LDA statistics with the final model (what stale statistics cost), and
`pristine` computes them with the untrained backbone (what adaptation adds at all).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from learner.bench import BenchConfig, _train_config, initial_state, load_split
from learner.data import Task
from learner.head import ClassStatistics, cosine_head, linear_logits
from learner.inputs import to_uint8_tensor
from learner.jobs.cli import parse_settings
from learner.state import ContinualModel, build_model
from learner.train import extract_features, learn_task

Head = Callable[[torch.Tensor], torch.Tensor]  # features (N, d) → logits (N, C)


def _features(model: ContinualModel, task: Task, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    batch = task.train if split == "train" else task.test
    feats = extract_features(model, to_uint8_tensor(batch.images)).double()
    return feats, torch.from_numpy(batch.labels).long()


def _heads(stats: ClassStatistics, centre: torch.Tensor, g: float) -> dict[str, Head]:
    cos_w, cos_b = cosine_head(stats.means)
    centred = F.normalize(stats.means - centre, dim=-1)
    w, b = stats.lda_head(g)
    return {
        "cosine": lambda f: linear_logits(f.float(), cos_w, cos_b),
        "cosine-centred": lambda f: (
            F.normalize(F.normalize(f, dim=-1) - centre, dim=-1) @ centred.T
        ),
        "lda": lambda f: linear_logits(f.float(), w, b),
    }


def _scores(
    model: ContinualModel, tasks: Sequence[Task], heads: dict[str, Head]
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in heads}
    offset = 0
    for task in tasks:
        feats, labels = _features(model, task, "test")
        for name, head in heads.items():
            correct = head(feats).argmax(1) == labels + offset
            out[name].append(100.0 * correct.double().mean().item())
        offset += len(task.class_names)
    return out


def _reference(model: ContinualModel, tasks: Sequence[Task], g: float) -> list[float]:
    stats = ClassStatistics.empty(model.num_features)
    for task in tasks:
        feats, labels = _features(model, task, "train")
        stats = stats.added(feats, labels, len(task.class_names))
    w, b = stats.lda_head(g)
    return _scores(model, tasks, {"lda": lambda f: linear_logits(f.float(), w, b)})["lda"]


def _summary(name: str, rows: list[list[float]]) -> str:
    last = rows[-1]
    bwt = sum(last[i] - rows[i][i] for i in range(len(rows) - 1)) / max(len(rows) - 1, 1)
    cells = " ".join(f"{a:5.1f}" for a in last)
    return f"{name:15s} ACC {sum(last) / len(last):6.2f}  BWT {bwt:+6.2f}  last row {cells}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="janus")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shrinkage", type=float, default=0.3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = parse_settings(args.set)
    cfg = BenchConfig(
        preset=args.preset, train_overrides={"num_threads": args.threads, **overrides}
    )
    tasks = load_split(cfg).test  # equal test sizes per task: ACC is the mean of the last row
    train_cfg = _train_config(cfg, args.method)
    state = initial_state(cfg)
    dim = build_model(state).num_features
    stats = ClassStatistics.empty(dim)
    total, seen = torch.zeros(dim, dtype=torch.float64), 0
    rows: dict[str, list[list[float]]] = {}
    model = build_model(state)
    for t, task in enumerate(tasks):
        result = learn_task(state, task.train, train_cfg)
        state, model = result.state, result.model
        feats, labels = _features(model, task, "train")
        k = len(task.class_names)
        stats = stats.added(feats, labels, k)
        total, seen = total + F.normalize(feats, dim=-1).sum(0), seen + len(labels)
        heads = _heads(stats, total / seen, args.shrinkage)
        for name, accs in _scores(model, tasks[: t + 1], heads).items():
            rows.setdefault(name, []).append(accs)
        print(f"after task {t + 1}: " + ", ".join(f"{n} {r[-1][-1]:.1f}" for n, r in rows.items()))
    print(f"\n{args.method}, preset {args.preset}, shrinkage {args.shrinkage}")
    for name, matrix in rows.items():
        print(_summary(name, matrix))
    fresh = _reference(model, tasks, args.shrinkage)
    pristine = _reference(build_model(initial_state(cfg)), tasks, args.shrinkage)
    for name, last in (("fresh", fresh), ("pristine", pristine)):
        print(
            f"{name:15s} ACC {sum(last) / len(last):6.2f}  last row "
            + " ".join(f"{a:5.1f}" for a in last)
        )


if __name__ == "__main__":
    main()
