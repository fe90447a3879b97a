"""Gradient Rectification (GR) of Janus-LoRA (DESIGN.md §3).

The safe full-weight update is `D = g Q` with `g = ∂L/∂W` the gradient of the frozen base weight,
formed as `Gᵀ X` from each layer's input tokens and output gradient (`LoRALayer.grad_sink`).
Adam moments live on `D` (m×n per layer); the step `U = AdamDirection(D)·Q` is mapped to factor
updates in closed form (LoRA-Pro's tangent-space projection, free matrix X = 0):

    ΔA = (1/s) (BᵀB + δ_B I)⁻¹ Bᵀ U
    ΔB = (1/s) (I − P_B) U Aᵀ (AAᵀ + δ_A I)⁻¹,   P_B = B (BᵀB + δ_B I)⁻¹ Bᵀ
    A ← A − η ΔA,  B ← B − η ΔB

so that `s(B ΔA + ΔB A) = P_B U + (I − P_B) U P_A` and `ΔA Q = ΔA` (A M = 0 is kept).
*(ours)* δ_B = damping·tr(BᵀB)/r + 1e-12 and likewise δ_A: the damping scales with the factors,
so a small B (early in a task) does not blow ΔA up.

*(ours)* Rebalancing after every step: left alone, `ΔA ≈ B⁺U/s` makes ‖A‖ grow about linearly
while B stays small, and the step's second-order term `η² s ΔB ΔA` (dropped by the closed form)
grows as large as the first-order one. `A = U_A Σ V_Aᵀ` (thin SVD, r×n) is replaced by `Vᵀ` and B
absorbs `U_A Σ`: the product `B A`, hence ΔW, is unchanged, A keeps orthonormal rows (as the
task-start design gives them) and its row space, so A M = 0 holds without re-projecting A.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
    return factor_updates_from(a, b, b.T @ u, u @ a.T, scale, damping)


def factor_updates_from(
    a: torch.Tensor,
    b: torch.Tensor,
    bt_u: torch.Tensor,
    u_at: torch.Tensor,
    scale: float,
    damping: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`factor_updates` from the only two products of U it needs: Bᵀ U (r×n) and U Aᵀ (m×r)."""
    gb_inv = _damped_gram_inverse(b, damping)  # (r, r): (BᵀB + δI)⁻¹
    ga_inv = _damped_gram_inverse(a.T, damping)  # (r, r): (AAᵀ + δI)⁻¹
    delta_a = gb_inv @ bt_u / scale  # (r, n)
    pb_u_at = b @ (gb_inv @ (b.T @ u_at))  # (m, r): P_B U Aᵀ
    delta_b = (u_at - pb_u_at) @ ga_inv / scale  # (m, r)
    return delta_a, delta_b


def rebalance(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (A' r×n, B' m×r) with `B' A' = B A` and orthonormal (or zero) rows of A'.

    Rows of A' lie in A's row space; directions A does not span (zero singular values) get zero
    rows, never arbitrary ones, so A' M = 0 whenever A M = 0.
    """
    u, sigma, vh = torch.linalg.svd(a, full_matrices=False)  # (r, r), (r,), (r, n)
    keep = sigma > sigma.max().clamp_min(_FLOOR) * 1e-6  # (r,)
    return vh * keep[:, None], b @ (u * sigma)  # (r, n), (m, r)


def composite_update(
    a: torch.Tensor, b: torch.Tensor, u: torch.Tensor, damping: float
) -> torch.Tensor:
    """`P_B U + (I − P_B) U P_A` (m×n): what the factor updates realise (for tests)."""
    p_b = b @ _damped_gram_inverse(b, damping) @ b.T  # (m, m)
    p_a = a.T @ _damped_gram_inverse(a.T, damping) @ a  # (n, n)
    return p_b @ u + (u - p_b @ u) @ p_a


class GradientRectifier:
    """Adam on the safe update `D = g Q` of every adapted layer, applied through its factors.

    Implements `learner.updates.UpdateRule`.
    """

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
        self.grads: dict[str, torch.Tensor] = {}  # g = ∂L/∂W (m×n) of the last backward
        for name, layer in layers.items():
            layer.lora_A.requires_grad_(False)
            layer.lora_B.requires_grad_(True)  # keeps a graph through every layer; ∂L/∂B unused
            layer.grad_sink = self._sink(name)

    def _sink(self, name: str) -> Callable[[torch.Tensor, torch.Tensor], None]:
        def collect(tokens: torch.Tensor, out_grad: torch.Tensor) -> None:
            g = out_grad.T.float() @ tokens.float()  # (m, n) = Gᵀ X = ∂L/∂W
            self.grads[name] = self.grads[name] + g if name in self.grads else g

        return collect

    def zero_grad(self) -> None:
        self.grads.clear()
        for layer in self.layers.values():
            layer.lora_B.grad = None

    @torch.no_grad()
    def adam_direction(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """`AdamDirection(g Q)` (m×n) for the layer's gradient g (m×n); updates the moments.

        The safe update is this direction times Q; `step` never forms it (see there).
        """
        beta1, beta2 = self.betas
        d = self.projectors[name](grad)  # D = g Q
        m, v = self.exp_avg[name], self.exp_avg_sq[name]
        m.mul_(beta1).add_(d, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(d, d, value=1 - beta2)
        bias1 = 1 - beta1**self.step_count
        bias2 = 1 - beta2**self.step_count
        denom = (v.sqrt() / math.sqrt(bias2)).add_(self.eps)
        return torch.div(m, denom).div_(bias1)  # Adam: (m/b1) / (√(v/b2) + eps)

    def safe_direction(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """`U = AdamDirection(g Q) Q` (m×n), formed in full (tests and reading)."""
        return self.projectors[name](self.adam_direction(name, grad))

    @torch.no_grad()
    def step(self) -> None:
        """One GR step on every layer.

        The factor updates need only `Bᵀ U = (Bᵀ V) Q` (r×n) and `U Aᵀ = V (A Q)ᵀ` (m×r) of
        `U = V Q`, V the Adam direction: projecting those small products, not V (m×n), saves a
        projection of every layer's full weight per step (the same update).
        """
        self.step_count += 1
        for name, layer in self.layers.items():
            if name not in self.grads:
                continue
            v = self.adam_direction(name, self.grads[name])  # (m, n)
            a, b = layer.lora_A, layer.lora_B
            project = self.projectors[name]
            bt_u = project(b.T @ v)  # (r, n): Bᵀ V Q
            u_at = v @ project(a).T  # (m, r): V Q Aᵀ
            delta_a, delta_b = factor_updates_from(a, b, bt_u, u_at, layer.scale, self.damping)
            _apply(layer, delta_a, delta_b, self.lr)

    def release(self) -> None:
        """Detach from the layers: no sink, factors frozen."""
        self.grads.clear()
        for layer in self.layers.values():
            layer.grad_sink = None
            layer.lora_B.requires_grad_(False)
            layer.lora_B.grad = None


@torch.no_grad()
def apply_update(layer: LoRALayer, u: torch.Tensor, lr: float, damping: float) -> None:
    """`A ← A − η ΔA`, `B ← B − η ΔB` for the full update U (m×n), then rebalance."""
    delta_a, delta_b = factor_updates(layer.lora_A, layer.lora_B, u, layer.scale, damping)
    _apply(layer, delta_a, delta_b, lr)


def _apply(layer: LoRALayer, delta_a: torch.Tensor, delta_b: torch.Tensor, lr: float) -> None:
    a, b = layer.lora_A, layer.lora_B
    new_a, new_b = rebalance(a - lr * delta_a, b - lr * delta_b)
    a.copy_(new_a)
    b.copy_(new_b)
