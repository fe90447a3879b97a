"""Continual-learning metrics and their reports (DESIGN.md §3 "Metrics").

``R[t][i]`` is the accuracy (percent) on task i's test set after learning task t (i ≤ t),
predicting among all classes seen so far. With ``n_i`` the size of task i's test set:

- accuracy after task t: ``A_t = Σ_{i≤t} n_i R[t][i] / Σ_{i≤t} n_i`` (over test samples);
- ACC = ``A_{T-1}``; MAA = ``mean_t A_t``;
- BWT = ``mean_{i<T-1} (R[T-1][i] − R[i][i])`` (0 when T = 1).

Reports: ``results.json``, ``results.md`` and PNG plots, drawn with matplotlib's Agg canvas
(no display, no pyplot global state).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

__all__ = [
    "AccuracyMatrix",
    "accuracy_from_counts",
    "markdown_table",
    "matrix_markdown",
    "mean_std",
    "search_summary",
    "write_results",
]

_Matrix = list[list[float | None]]


def accuracy_from_counts(correct: Sequence[int], total: Sequence[int]) -> list[float]:
    """Per-task accuracies in percent: ``100 · correct_i / total_i``."""
    if len(correct) != len(total):
        raise ValueError(f"{len(correct)} correct counts but {len(total)} totals")
    out = []
    for i, (c, n) in enumerate(zip(correct, total, strict=True)):
        if n <= 0 or not 0 <= c <= n:
            raise ValueError(f"task {i}: need 0 ≤ correct ≤ total and total > 0, got {c}/{n}")
        out.append(100.0 * c / n)
    return out


@dataclass
class AccuracyMatrix:
    """Lower-triangular accuracy matrix of a class-incremental run.

    Attributes:
        rows: ``rows[t][i]`` = accuracy (percent) on task i after learning task t; row t has
            t + 1 entries.
        task_sizes: test-set size of each task (may be given for all tasks up front).
    """

    rows: list[list[float]] = field(default_factory=list)
    task_sizes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        rows, self.rows = self.rows, []
        self.task_sizes = [int(n) for n in self.task_sizes]
        if any(n <= 0 for n in self.task_sizes):
            raise ValueError(f"task sizes must be positive, got {self.task_sizes}")
        for row in rows:
            self.add_row(row)

    @classmethod
    def from_square(
        cls, matrix: Sequence[Sequence[float | None]], task_sizes: Sequence[int]
    ) -> AccuracyMatrix:
        """Rebuilds a matrix from ``to_square()`` output (entries above the diagonal dropped)."""
        rows = [
            [math.nan if v is None else float(v) for v in row[: t + 1]]
            for t, row in enumerate(matrix)
        ]
        return cls(rows, list(task_sizes))

    @property
    def num_tasks(self) -> int:
        """Number of tasks learned so far (rows)."""
        return len(self.rows)

    def add_row(self, accs: Sequence[float], task_size: int | None = None) -> None:
        """Appends the accuracies on tasks 0..t after learning task t.

        Args:
            accs: t + 1 accuracies in percent.
            task_size: test-set size of task t, if ``task_sizes`` does not hold it yet.
        """
        t = len(self.rows)
        if len(accs) != t + 1:
            raise ValueError(f"row {t} needs {t + 1} accuracies (tasks 0..{t}), got {len(accs)}")
        row = [float(a) for a in accs]
        bad = [a for a in row if not (math.isfinite(a) and 0.0 <= a <= 100.0)]
        if bad:
            raise ValueError(f"row {t}: accuracies are percentages in [0, 100], got {bad}")
        if task_size is not None:
            if len(self.task_sizes) != t:
                raise ValueError(
                    f"task_size given for task {t} but {len(self.task_sizes)} sizes are known"
                )
            if task_size <= 0:
                raise ValueError(f"task {t}: test-set size must be positive, got {task_size}")
            self.task_sizes.append(int(task_size))
        self.rows.append(row)

    def _check(self) -> int:
        T = len(self.rows)
        if T == 0:
            raise ValueError("the accuracy matrix is empty; add a row after each task")
        if len(self.task_sizes) < T:
            raise ValueError(
                f"{T} rows but only {len(self.task_sizes)} task sizes; give every task's "
                "test-set size"
            )
        return T

    def accuracy_after(self, t: int) -> float:
        """Accuracy (percent) over the test samples of tasks 0..t after learning task t."""
        T = self._check()
        if t < 0:
            t += T
        if not 0 <= t < T:
            raise IndexError(f"task {t} out of range 0..{T - 1}")
        sizes = np.asarray(self.task_sizes[: t + 1], dtype=np.float64)  # (t+1,)
        return float(np.dot(self.rows[t], sizes) / sizes.sum())

    def acc(self) -> float:
        """ACC: accuracy over all seen tasks' test samples after the last task."""
        return self.accuracy_after(self._check() - 1)

    def maa(self) -> float:
        """MAA: mean over tasks t of the accuracy after task t."""
        return float(np.mean([self.accuracy_after(t) for t in range(self._check())]))

    def bwt(self) -> float:
        """BWT: mean over i < T−1 of ``R[T−1][i] − R[i][i]``; 0.0 for a single task."""
        T = self._check()
        if T == 1:
            return 0.0
        last = self.rows[-1]
        return float(np.mean([last[i] - self.rows[i][i] for i in range(T - 1)]))

    def accuracies_after(self) -> list[float]:
        """``accuracy_after(t)`` for every task t."""
        return [self.accuracy_after(t) for t in range(self._check())]

    def to_square(self) -> _Matrix:
        """T×T list of lists; entries above the diagonal (and NaN) are None, for JSON."""
        T = len(self.rows)
        return [
            [row[i] if i <= t and math.isfinite(row[i]) else None for i in range(T)]
            for t, row in enumerate(self.rows)
        ]

    def summary(self) -> dict[str, Any]:
        """``{"acc", "maa", "bwt", "matrix", "acc_per_task", "task_sizes"}``."""
        return {
            "acc": self.acc(),
            "maa": self.maa(),
            "bwt": self.bwt(),
            "matrix": self.to_square(),
            "acc_per_task": self.accuracies_after(),
            "task_sizes": list(self.task_sizes[: self.num_tasks]),
        }


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def _methods(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    methods = results.get("methods")
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError('results need a non-empty "methods" mapping: {"methods": {name: {...}}}')
    for name, m in methods.items():
        for key in ("acc", "maa", "bwt", "matrix"):
            if key not in m:
                raise ValueError(f'results["methods"][{name!r}] lacks {key!r}')
    return {str(k): dict(v) for k, v in methods.items()}


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


def _square(matrix: Sequence[Sequence[float | None]]) -> _Matrix:
    """Pads ragged rows with None to a rectangle."""
    width = max((len(r) for r in matrix), default=0)
    return [
        [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in r]
        + [None] * (width - len(r))
        for r in matrix
    ]


def _per_task(m: Mapping[str, Any]) -> list[float]:
    """Accuracy after each task: stored, else weighted by task sizes, else the row mean."""
    if m.get("acc_per_task"):
        return [float(v) for v in m["acc_per_task"]]
    sizes = m.get("task_sizes")
    out = []
    for row in _square(m["matrix"]):
        vals = [(i, v) for i, v in enumerate(row) if v is not None]
        if not vals:
            out.append(math.nan)
        elif sizes and len(sizes) >= len(row):
            weight = sum(sizes[i] for i, _ in vals)
            out.append(sum(sizes[i] * v for i, v in vals) / weight)
        else:
            out.append(sum(v for _, v in vals) / len(vals))
    return out


def mean_std(m: Mapping[str, Any], key: str, spec: str = ".2f") -> str:
    """``mean ± std`` of a result's ``key`` (its ``key_std`` if present and set)."""
    std = m.get(f"{key}_std")
    text = _fmt(m.get(key), spec)
    return text if std is None or text == "–" else f"{text} ± {format(std, '.2f')}"


def search_summary(search: Sequence[Mapping[str, float]]) -> str:
    """A setting's candidates with their validation ACC: ``value: val_acc, …``."""
    return ", ".join(f"{r['value']:g}: {r['val_acc']:.2f}" for r in search)


def markdown_table(results: Mapping[str, Any]) -> str:
    """Summary table, one row per method: ACC, MAA, BWT (mean ± std over seeds), interference,
    the paired difference to janus, train time, step time, step ratio.

    The violation, drift and Δ-to-janus columns appear when some method has them; the last
    column (step time over ``seq-lora``'s) when ``seq-lora`` is present.
    """
    methods = _methods(results)
    base = methods.get("seq-lora", {}).get("step_s")
    ratio = isinstance(base, int | float) and base > 0
    interference = any(m.get("violation") is not None for m in methods.values())
    paired = any(m.get("vs_janus") for m in methods.values())
    head = ["method", "ACC", "MAA", "BWT"]
    if interference:
        head += ["violation", "drift"]
    if paired:
        head += ["ΔACC vs janus", "ΔBWT vs janus"]
    head += ["train s", "step ms"]
    if ratio:
        head.append("step / seq-lora")
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for name, m in methods.items():
        step = m.get("step_s")
        cells = [
            name,
            mean_std(m, "acc", ".2f"),
            mean_std(m, "maa", ".2f"),
            mean_std(m, "bwt", "+.2f"),
        ]
        if interference:
            cells += [_fmt(m.get("violation"), ".1e"), _fmt(m.get("drift"), ".1e")]
        if paired:
            vs = m.get("vs_janus") or {}
            cells += [mean_std(vs, "acc", "+.2f"), mean_std(vs, "bwt", "+.2f")]
        cells += [
            _fmt(m.get("train_s"), ".1f"),
            _fmt(None if step is None else 1000.0 * step, ".1f"),
        ]
        if ratio:
            cells.append(_fmt(None if step is None else step / base, ".2f"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def matrix_markdown(matrix: Sequence[Sequence[float | None]]) -> str:
    """Accuracy matrix as a Markdown table: rows "after task t", columns "task i"."""
    sq = _square(matrix)
    width = len(sq[0]) if sq else 0
    lines = [
        "| after \\ on | " + " | ".join(f"task {i + 1}" for i in range(width)) + " |",
        "|---|" + "---:|" * width,
    ]
    for t, row in enumerate(sq):
        lines.append(f"| task {t + 1} | " + " | ".join(_fmt(v, ".1f") for v in row) + " |")
    return "\n".join(lines) + "\n"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "method"


def _jsonable(obj: Any) -> Any:
    """Converts numpy scalars/arrays and non-finite floats (→ None) for strict JSON."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_results(results: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Writes ``results.json``, ``results.md`` and the plots into ``out_dir``.

    Args:
        results: ``{"methods": {name: {"acc", "maa", "bwt", "matrix", "train_s", "step_s",
            ...}}, "config": {...}}``, accuracies in percent.
        out_dir: created if missing.

    Returns:
        The written files by role: "json", "markdown", "per_task", and "matrix:<method>".
    """
    methods = _methods(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    payload = _jsonable(results)
    written["json"] = out / "results.json"
    written["json"].write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")

    parts = ["# Class-incremental results\n\n", markdown_table(results)]
    parts.append(
        "\nACC: accuracy over all tasks' test samples after the last task; MAA: mean of that "
        "accuracy after each task; BWT: mean change on earlier tasks since they were learned "
        "(percentage points); mean ± sample std over seeds. violation: relative output change "
        "on the protected subspace, drift: on all earlier inputs (mean over layers and tasks "
        "2..). Δ vs janus: the method's figure minus janus's, paired by seed.\n"
    )
    tuned = {n: m["tuned"] for n, m in methods.items() if m.get("tuned")}
    if tuned:
        parts.append(
            "\n## Settings chosen on validation\n\n"
            "| method | setting | searched (val ACC) | chosen |\n|---|---|---|---:|\n"
        )
        for name, t in tuned.items():
            searched = search_summary(t["search"])
            shared = f" (shared from {t['shared_from']})" if t.get("shared_from") else ""
            parts.append(f"| {name} | {t['key']} | {searched} | {t['value']:g}{shared} |\n")
            if "dml_lambda" in t:
                dml = t["dml_lambda"]
                searched = search_summary(dml["search"])
                parts.append(f"| {name} | dml_lambda | {searched} | {dml['value']:g} |\n")
    for name, m in methods.items():
        parts.append(f"\n## {name}: accuracy matrix (%)\n\n{matrix_markdown(m['matrix'])}")
    if results.get("config"):
        cfg = json.dumps(_jsonable(results["config"]), indent=2, allow_nan=False)
        parts.append(f"\n## Configuration\n\n```json\n{cfg}\n```\n")
    written["markdown"] = out / "results.md"
    written["markdown"].write_text("".join(parts))

    for name, m in methods.items():
        path = out / f"accuracy_matrix_{_safe_name(name)}.png"
        _plot_matrix(name, m["matrix"], path)
        written[f"matrix:{name}"] = path
    written["per_task"] = out / "accuracy_per_task.png"
    _plot_per_task(methods, written["per_task"])
    curves = _violation_curves(methods)
    if curves:
        written["violation"] = out / "violation_per_layer.png"
        _plot_violation(curves, written["violation"])
    return written


def _violation_curves(methods: Mapping[str, Mapping[str, Any]]) -> dict[str, list[float]]:
    """Per-layer violation of every method that has it for every layer."""
    curves = {}
    for name, m in methods.items():
        per_layer = m.get("layer_violation") or {}
        values = [v for v in per_layer.values() if v is not None and math.isfinite(v)]
        if values and len(values) == len(per_layer):
            curves[name] = values
    return curves


def _plot_violation(curves: Mapping[str, Sequence[float]], path: Path) -> None:
    """Violation per adapted layer (model order), one line per method, log scale."""
    fig = Figure(figsize=(7.0, 4.0), dpi=110)
    ax = fig.add_subplot()
    floor = 1e-12  # exact zeros (frozen A) drawn at the floor
    for name, values in curves.items():
        ax.plot(range(len(values)), [max(v, floor) for v in values], marker=".", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("adapted layer (model order)")
    ax.set_ylabel("relative output change on the protected subspace")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("Violation per layer (mean over tasks 2..)")
    fig.tight_layout()
    fig.savefig(path, format="png")


def _plot_matrix(name: str, matrix: Sequence[Sequence[float | None]], path: Path) -> None:
    sq = _square(matrix)
    data = np.array([[np.nan if v is None else v for v in row] for row in sq], dtype=np.float64)
    rows, cols = data.shape if data.size else (0, 0)
    fig = Figure(figsize=(1.2 + 0.7 * max(cols, 1), 1.0 + 0.6 * max(rows, 1)), dpi=110)
    ax = fig.add_subplot()
    img = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=0.0, vmax=100.0)
    for t in range(rows):
        for i in range(cols):
            if not np.isnan(data[t, i]):
                color = "black" if data[t, i] > 60 else "white"
                ax.text(
                    i, t, f"{data[t, i]:.1f}", ha="center", va="center", fontsize=8, color=color
                )
    ax.set_xticks(range(cols), [str(i + 1) for i in range(cols)])
    ax.set_yticks(range(rows), [str(t + 1) for t in range(rows)])
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after learning task")
    ax.set_title(f"{name}: accuracy (%)")
    fig.colorbar(img, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, format="png")


def _plot_per_task(methods: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    fig = Figure(figsize=(6.0, 4.0), dpi=110)
    ax = fig.add_subplot()
    curves = {name: _per_task(m) for name, m in methods.items()}
    longest = max(1, *(len(a) for a in curves.values()))
    for name, accs in curves.items():
        if len(accs) == 1 and longest > 1:  # one figure only (e.g. joint): a reference line
            ax.axhline(
                accs[0], linestyle="--", linewidth=1.2, label=name, color=f"C{len(ax.lines)}"
            )
        else:
            ax.plot(range(1, len(accs) + 1), accs, marker="o", label=name)
    ax.set_xticks(range(1, longest + 1))
    ax.set_xlabel("tasks learned")
    ax.set_ylabel("accuracy on all seen classes (%)")
    ax.set_ylim(0.0, 100.0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("Accuracy after each task")
    fig.tight_layout()
    fig.savefig(path, format="png")
