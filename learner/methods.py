"""Registry of continual-learning methods, all in one code path (DESIGN.md §3).

`janus` is Janus-LoRA (OE + GR + DML). Its baselines are built as their papers build them:
`inflora` (designed A, frozen; B trained by Adam; basis from the task's own inputs at task end),
`lora-gpm` (the paper's LoRA-GPM: A's gradient projected before Adam, A never re-projected, B
free, GPM's basis from the task's own inputs), `lora-gpm-proj` (A re-projected after every Adam
step, so nothing leaks), `seq-lora` (plain LoRA), `joint` (all tasks at once, the upper bound)
and `frozen` (trains nothing: the pristine backbone's features and the head from class
statistics, what adaptation adds is measured against it).

The ablation grid of the paper (`ABLATIONS`) switches Janus-LoRA's components on one at a time
over a base with none of them: without OE the covariance comes from an extra pass at task end,
without GR the factors move by `adam-projected` (LoRA-GPM's rule), without DML there is no margin
loss. Everything else (designed A, running covariance, the head) is janus's.
"""

from __future__ import annotations

from typing import Any

from learner.config import MethodConfig

_UNPROTECTED: dict[str, Any] = dict(
    a_init="random", protect=False, update="adam", margin_loss=False
)
"""Plain LoRA: random A, no subspace protection, Adam, no DML."""

_GPM_BASIS: dict[str, Any] = dict(online_estimation=False, running_covariance=False)
"""GPM's and InfLoRA's basis: an extra pass at task end over the task's own inputs."""


def _ablation(oe: bool, gr: bool, dml: bool) -> MethodConfig:
    parts = [name for name, on in (("oe", oe), ("gr", gr), ("dml", dml)) if on]
    return MethodConfig(
        name="abl-" + ("-".join(parts) or "none"),
        online_estimation=oe,
        update="gr" if gr else "adam-projected",
        margin_loss=dml,
    )


_GRID = [
    _ablation(False, False, False),
    _ablation(True, False, False),
    _ablation(False, True, False),
    _ablation(False, False, True),
    _ablation(True, True, False),
    _ablation(True, False, True),
]

_REGISTRY: dict[str, MethodConfig] = {
    "janus": MethodConfig(name="janus"),
    "inflora": MethodConfig(
        name="inflora", update="adam", margin_loss=False, train_a=False, **_GPM_BASIS
    ),
    "lora-gpm": MethodConfig(
        name="lora-gpm", a_init="random", update="adam-projected", margin_loss=False, **_GPM_BASIS
    ),
    "lora-gpm-proj": MethodConfig(
        name="lora-gpm-proj", update="adam-reprojected", margin_loss=False
    ),
    "seq-lora": MethodConfig(name="seq-lora", **_UNPROTECTED),
    "frozen": MethodConfig(name="frozen", **_UNPROTECTED, adapt=False),
    "joint": MethodConfig(name="joint", **_UNPROTECTED, joint=True),
    **{m.name: m for m in _GRID},
}

ABLATIONS = (*(m.name for m in _GRID), "janus")
"""The paper's grid: none, OE, GR, DML, OE+GR, OE+DML, all (= janus)."""

BASELINES = ("janus", "inflora", "lora-gpm", "lora-gpm-proj", "seq-lora", "joint", "frozen")
"""The main table: janus, its baselines and the two references."""


def list_methods() -> list[str]:
    return list(_REGISTRY)


def get_method(name: str) -> MethodConfig:
    """The preset called `name`; raises ValueError listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(_REGISTRY)}") from None
