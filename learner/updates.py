"""How the current task's LoRA factors move: one small interface, four rules (DESIGN.md §3).

Every method's step is `zero_grad()`, the loss's `backward()`, then `step()`; `release()` at
task end. The rules, by `MethodConfig.update`:

- `adam`: Adam on A and B (or on B alone when A is frozen, as InfLoRA): seq-lora, joint, inflora.
- `adam-projected`: the paper's LoRA-GPM. A's gradient is projected, `∇A ← ∇A Q`, before Adam;
  the parameters are never re-projected and B moves freely. Adam's per-coordinate scaling
  `m/√v` does not commute with `Q`, so A drifts into span(M) and `ΔW M ≠ 0`: the leak the
  Janus-LoRA paper diagnoses.
- `adam-reprojected`: Adam, then `A ← A Q` after every step (`lora-gpm-proj`): `ΔW M = 0` exactly.
- `gr`: Gradient Rectification (`learner.janus.rectification`), Adam on the safe full-weight
  update `g Q` realised through the factors.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from learner.config import UpdateKind
from learner.janus.estimation import Projector
from learner.janus.rectification import GradientRectifier
from learner.lora.layer import LoRALayer


class UpdateRule(Protocol):
    """Moves the current task's factors from the gradients of the last backward pass."""

    def zero_grad(self) -> None: ...

    def step(self) -> None: ...

    def release(self) -> None: ...


class FactorAdam:
    """Adam on the factors: A and B, or B alone (`train_a=False`)."""

    def __init__(
        self, layers: dict[str, LoRALayer], lr: float, weight_decay: float, train_a: bool
    ) -> None:
        self.layers = layers
        params: list[nn.Parameter] = []
        for layer in layers.values():
            layer.lora_A.requires_grad_(train_a)
            layer.lora_B.requires_grad_(True)
            params += [layer.lora_A, layer.lora_B] if train_a else [layer.lora_B]
        self.optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.optimizer.step()

    def release(self) -> None:
        for layer in self.layers.values():
            layer.lora_A.requires_grad_(False)
            layer.lora_B.requires_grad_(False)


class _ProtectedAdam(FactorAdam):
    """Adam on A and B with each layer's projector `x ↦ x Q` at hand."""

    def __init__(
        self,
        layers: dict[str, LoRALayer],
        bases: dict[str, torch.Tensor],
        lr: float,
        weight_decay: float,
    ) -> None:
        super().__init__(layers, lr, weight_decay, train_a=True)
        self.projectors = {name: Projector(bases[name]) for name in layers}


class ProjectedGradientAdam(_ProtectedAdam):
    """LoRA-GPM as published: `∇A ← ∇A Q` before Adam; A itself is never re-projected."""

    @torch.no_grad()
    def step(self) -> None:
        for name, layer in self.layers.items():
            grad = layer.lora_A.grad
            if grad is not None:
                grad.copy_(self.projectors[name](grad))  # (r, n): ∇A Q
        self.optimizer.step()


class ReprojectedAdam(_ProtectedAdam):
    """Adam on A and B, then `A ← A Q`: the step's leak into span(M) is undone every time."""

    @torch.no_grad()
    def step(self) -> None:
        self.optimizer.step()
        for name, layer in self.layers.items():
            layer.lora_A.copy_(self.projectors[name](layer.lora_A))  # (r, n): A Q


def make_update_rule(
    kind: UpdateKind,
    layers: dict[str, LoRALayer],
    bases: dict[str, torch.Tensor],
    *,
    lr: float,
    gr_lr: float,
    weight_decay: float,
    damping: float,
    train_a: bool,
) -> UpdateRule:
    """The rule `kind` over `layers`; `bases` are the protected bases M (n×k) by layer."""
    if kind == "gr":
        return GradientRectifier(layers, bases, lr=gr_lr, damping=damping)
    if kind == "adam-projected":
        return ProjectedGradientAdam(layers, bases, lr, weight_decay)
    if kind == "adam-reprojected":
        return ReprojectedAdam(layers, bases, lr, weight_decay)
    return FactorAdam(layers, lr, weight_decay, train_a)
