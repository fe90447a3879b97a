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
grows as large as the first-order one. A is replaced by an orthonormal basis of its row space
(`L⁻¹A` with `AAᵀ = L Lᵀ`) and B absorbs `L`: the product `B A`, hence ΔW, is unchanged, A keeps
orthonormal rows (as the task-start design gives them) and its row space, so A M = 0 holds
without re-projecting A.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from learner.janus.estimation import Projector
from learner.lora.layer import LoRALayer

_FLOOR = 1e-12


def _damped_inverse(gram: torch.Tensor, damping: float) -> torch.Tensor:
    """(G + δI)⁻¹ for a Gram matrix G (r, r), δ = damping·tr(G)/r + floor."""
    r = gram.shape[0]
    damped = gram.clone()
    damped.diagonal().add_(torch.trace(gram) * (damping / r) + _FLOOR)
    return torch.linalg.inv(damped)


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
    gb_inv = _damped_inverse(b.T @ b, damping)  # (r, r): (BᵀB + δI)⁻¹
    ga_inv = _damped_inverse(a @ a.T, damping)  # (r, r): (AAᵀ + δI)⁻¹
    delta_a = (gb_inv / scale) @ bt_u  # (r, n)
    pb_u_at = b @ (gb_inv @ (b.T @ u_at))  # (m, r): P_B U Aᵀ
    delta_b = (u_at - pb_u_at) @ (ga_inv / scale)  # (m, r)
    return delta_a, delta_b


def rebalance(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (A' r×n, B' m×r) with `B' A' = B A` and orthonormal (or zero) rows of A'.

    Rows of A' lie in A's row space. With A well conditioned (as after a step from orthonormal
    rows), `AAᵀ = L Lᵀ` (Cholesky) gives `A' = L⁻¹ A`, `B' = B L` (cheap: r×r work and one
    triangular solve). Otherwise (zero rows, when the basis leaves fewer than r free directions)
    the thin SVD: directions A does not span get zero rows, never arbitrary ones, so A' M = 0
    whenever A M = 0; so do the rows past n of a layer narrower than the rank (r > n).
    """
    chol, info = torch.linalg.cholesky_ex(a @ a.T)  # (r, r) lower
    diag = chol.diagonal()
    if int(info) == 0 and bool(diag.min() > 0.1 * diag.max()):  # L⁻¹ amplifies rounding ≤ ~10×
        return torch.linalg.solve_triangular(chol, a, upper=False), b @ chol  # (r, n), (m, r)
    u, sigma, vh = torch.linalg.svd(a, full_matrices=False)  # (r, k), (k,), (k, n); k = min(r, n)
    keep = sigma > sigma.max().clamp_min(_FLOOR) * 1e-6  # (k,)
    k = sigma.shape[0]  # < r when the layer is narrower than the rank: the other rows stay zero
    new_a, new_b = torch.zeros_like(a), torch.zeros_like(b)
    new_a[:k], new_b[:, :k] = vh * keep[:, None], b @ (u * sigma)  # (k, n), (m, k)
    return new_a, new_b


def composite_update(
    a: torch.Tensor, b: torch.Tensor, u: torch.Tensor, damping: float
) -> torch.Tensor:
    """`P_B U + (I − P_B) U P_A` (m×n): what the factor updates realise (for tests)."""
    p_b = b @ _damped_inverse(b.T @ b, damping) @ b.T  # (m, m)
    p_a = a.T @ _damped_inverse(a @ a.T, damping) @ a  # (n, n)
    return p_b @ u + (u - p_b @ u) @ p_a


class GradientRectifier:
    """Adam on the safe update `D = g Q` of every adapted layer, applied through its factors.

    Implements `learner.updates.UpdateRule`. The Adam moments live on D (m×n per layer) in one
    fused `torch.optim.Adam` over zeroed buffers P at step size 1: a step leaves exactly
    `P = −AdamDirection(D)` (one kernel for every layer instead of seven element-wise passes
    per layer), which the factor updates read before P is zeroed again.
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
        self.lr, self.damping = lr, damping
        self.buffers = {
            n: torch.zeros(ly.out_features, ly.in_features, device=ly.lora_A.device)
            for n, ly in layers.items()
        }
        self.optimizer = torch.optim.Adam(
            list(self.buffers.values()), lr=1.0, betas=betas, eps=eps, fused=True
        )
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

    def first_moment(self, name: str) -> torch.Tensor:
        """Adam's first moment of the layer's D (m×n); zeros before the first step."""
        state = self.optimizer.state.get(self.buffers[name], {})
        return state.get("exp_avg", torch.zeros_like(self.buffers[name]))

    @torch.no_grad()
    def adam_directions(self) -> dict[str, torch.Tensor]:
        """`V = AdamDirection(g Q)` (m×n) of every layer with a gradient; updates the moments.

        The safe update is `U = V Q`; `step` never forms it (see there).
        """
        moved = self._adam_step()
        directions = {name: -p for name, p in moved.items()}
        self._clear(moved)
        return directions

    def safe_directions(self) -> dict[str, torch.Tensor]:
        """`U = V Q` (m×n) of every layer, formed in full (tests and reading)."""
        return {n: self.projectors[n](v) for n, v in self.adam_directions().items()}

    def _adam_step(self) -> dict[str, torch.Tensor]:
        """One fused Adam step on D = g Q; returns the moved buffers, each now −V."""
        moved = {}
        for name, grad in self.grads.items():  # the other buffers have no grad: Adam skips them
            moved[name] = p = self.buffers[name]
            p.grad = self.projectors[name](grad)  # D = g Q
        self.optimizer.step()  # P = 0 − 1·m̂/(√v̂ + eps)
        return moved

    @staticmethod
    def _clear(moved: dict[str, torch.Tensor]) -> None:
        for p in moved.values():
            p.grad = None
            p.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One GR step on every layer.

        The factor updates need only `Bᵀ U = (Bᵀ V) Q` (r×n) and `U Aᵀ = V (A Q)ᵀ = V Aᵀ` (m×r)
        of `U = V Q`, V the Adam direction (A Q = A since A M = 0 holds): projecting the small
        product, not V (m×n), saves a projection of every layer's full weight per step.
        """
        moved = self._adam_step()
        for name, neg_v in moved.items():  # −V per layer
            layer = self.layers[name]
            a, b = layer.lora_A, layer.lora_B
            bt_u = -self.projectors[name](b.T @ neg_v)  # (r, n): Bᵀ V Q, so ΔA M = 0 exactly
            u_at = -(neg_v @ a.T)  # (m, r): V Q Aᵀ = V Aᵀ
            delta_a, delta_b = factor_updates_from(a, b, bt_u, u_at, layer.scale, self.damping)
            _apply(layer, delta_a, delta_b, self.lr)
        self._clear(moved)

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
