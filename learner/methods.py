"""Registry of continual-learning methods, all in one code path (DESIGN.md §3).

`janus` is Janus-LoRA (OE + GR + DML); the others are its baselines and ablations. `frozen` trains
nothing (the pristine backbone's features, the head from class statistics): what adaptation adds
is measured against it.
"""

from __future__ import annotations

from typing import Any

from learner.config import MethodConfig

_UNPROTECTED: dict[str, Any] = dict(
    a_init="random", protect=False, rectify=False, margin_loss=False
)
"""Plain LoRA: random A, no subspace protection, no GR, no DML."""

_REGISTRY: dict[str, MethodConfig] = {
    "janus": MethodConfig(name="janus"),
    "janus-no-oe": MethodConfig(name="janus-no-oe", online_estimation=False),
    "janus-no-gr": MethodConfig(name="janus-no-gr", rectify=False),
    "janus-no-dml": MethodConfig(name="janus-no-dml", margin_loss=False),
    "inflora": MethodConfig(
        name="inflora",
        rectify=False,
        margin_loss=False,
        train_a=False,
        online_estimation=False,
        running_covariance=False,
    ),
    "lora-gpm": MethodConfig(name="lora-gpm", rectify=False, margin_loss=False),
    "seq-lora": MethodConfig(name="seq-lora", **_UNPROTECTED),
    "frozen": MethodConfig(name="frozen", **_UNPROTECTED, adapt=False),
    "joint": MethodConfig(name="joint", **_UNPROTECTED, joint=True),
}

ABLATIONS = ("janus-no-oe", "janus-no-gr", "janus-no-dml")


def list_methods() -> list[str]:
    return list(_REGISTRY)


def get_method(name: str) -> MethodConfig:
    """The preset called `name`; raises ValueError listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(_REGISTRY)}") from None
