"""Gradient Rectification (GR) of Janus-LoRA (DESIGN.md §3).

The safe full-weight update is `D = g Q` with `g = ∂L/∂W` (autograd's gradient of the frozen base
weight). Adam moments live on `D` (m×n per layer); the step `U = AdamDirection(D)·Q` is mapped to
factor updates in closed form (LoRA-Pro's tangent-space projection, free matrix X = 0):

    ΔA = (1/s) (BᵀB + δ_B I)⁻¹ Bᵀ U
    ΔB = (1/s) (I − P_B) U Aᵀ (AAᵀ + δ_A I)⁻¹,   P_B = B (BᵀB + δ_B I)⁻¹ Bᵀ
    A ← A − η ΔA,  B ← B − η ΔB

so that `s(B ΔA + ΔB A) = P_B U + (I − P_B) U P_A` and `ΔA Q = ΔA` (A M = 0 is kept).
*(ours)* δ_B = damping·tr(BᵀB)/r + 1e-12 and likewise δ_A: the damping scales with the factors,
so a small B (early in a task) does not blow ΔA up.
"""

from __future__ import annotations

import math

import torch

from learner.janus.estimation import Projector
from learner.lora.layer import LoRALayer

_FLOOR = 1e-12


def _damped_gram_inverse(x: torch.Tensor, damping: float) -> torch.Tensor:
    """(XᵀX + δI)⁻¹ for X (p, r), δ = damping·tr(XᵀX)/r + floor."""
    gram = x.T @ x  # (r, r)
    r = gram.shape[0]
    delta = damping * torch.trace(gram) / r + _FLOOR
    return torch.linalg.inv(gram + delta * torch.eye(r, dtype=x.dtype))


def factor_updates(
    a: torch.Tensor, b: torch.Tensor, u: torch.Tensor, scale: float, damping: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form factor updates (ΔA r×n, ΔB m×r) that best realise the full update U (m×n)."""
    gb_inv = _damped_gram_inverse(b, damping)  # (r, r): (BᵀB + δI)⁻¹
    ga_inv = _damped_gram_inverse(a.T, damping)  # (r, r): (AAᵀ + δI)⁻¹
    delta_a = gb_inv @ (b.T @ u) / scale  # (r, n)
    u_at = u @ a.T  # (m, r)
    pb_u_at = b @ (gb_inv @ (b.T @ u_at))  # (m, r): P_B U Aᵀ
    delta_b = (u_at - pb_u_at) @ ga_inv / scale  # (m, r)
    return delta_a, delta_b


def composite_update(
    a: torch.Tensor, b: torch.Tensor, u: torch.Tensor, damping: float
) -> torch.Tensor:
    """`P_B U + (I − P_B) U P_A` (m×n): what the factor updates realise (for tests)."""
    p_b = b @ _damped_gram_inverse(b, damping) @ b.T  # (m, m)
    p_a = a.T @ _damped_gram_inverse(a.T, damping) @ a  # (n, n)
    return p_b @ u + (u - p_b @ u) @ p_a


class GradientRectifier:
    """Adam on the safe update `D = g Q` of every adapted layer, applied through its factors."""

    def __init__(
        self,
        layers: dict[str, LoRALayer],
        bases: dict[str, torch.Tensor],
        lr: float,
        damping: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.layers = layers
        self.projectors = {name: Projector(bases[name]) for name in layers}  # x ↦ x Q per layer
        self.lr, self.damping, self.betas, self.eps = lr, damping, betas, eps
        self.step_count = 0
        self.exp_avg = {n: torch.zeros(ly.out_features, ly.in_features) for n, ly in layers.items()}
        self.exp_avg_sq = {n: torch.zeros_like(m) for n, m in self.exp_avg.items()}
        for layer in layers.values():
            layer.base_layer.weight.requires_grad_(True)  # autograd gives g = ∂L/∂W
            layer.lora_A.requires_grad_(False)
            layer.lora_B.requires_grad_(False)

    def zero_grad(self) -> None:
        for layer in self.layers.values():
            layer.base_layer.weight.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        beta1, beta2 = self.betas
        bias1 = 1 - beta1**self.step_count
        bias2 = 1 - beta2**self.step_count
        for name, layer in self.layers.items():
            w = layer.base_layer.weight
            if w.grad is None:
                continue
            r0, r1 = layer.rows
            g = w.grad.view(w.shape[0], w.shape[1])[r0:r1]  # (m, n)
            project = self.projectors[name]
            d = project(g)  # D = g Q
            m, v = self.exp_avg[name], self.exp_avg_sq[name]
            m.mul_(beta1).add_(d, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(d, d, value=1 - beta2)
            denom = (v.sqrt() / math.sqrt(bias2)).add_(self.eps)
            direction = torch.div(m, denom).div_(bias1)  # Adam: (m/b1) / (√(v/b2) + eps)
            u = project(direction)  # U = AdamDirection(D) Q
            a, b = layer.lora_A, layer.lora_B
            delta_a, delta_b = factor_updates(a, b, u, layer.scale, self.damping)
            a.sub_(self.lr * delta_a)
            b.sub_(self.lr * delta_b)
            a.copy_(project(a))  # keep A M = 0 against rounding

    def release(self) -> None:
        """Give the base weights back their frozen state."""
        for layer in self.layers.values():
            layer.base_layer.weight.requires_grad_(False)
            layer.base_layer.weight.grad = None
