"""Online Estimation (OE) of each adapted layer's input subspace, and the task-start design of A.

Janus-LoRA (ICML 2026), as DESIGN.md §3 builds it:

- OE: every training forward adds the detached layer input `X` (tokens×n) into `S += XᵀX`,
  `N += rows(X)`. No samples are kept; memory is O(n²) per layer for any number of tasks.
- Task end: with `C = S/N`, eigendecompose `Q C Q` (`Q = I − M Mᵀ`) and append its top
  eigenvectors to `M` until `(tr(MᵀCM) + Σλ_added) / tr(C) ≥ ε_t`.
- Task start: rows of `A` span the top-r eigenvectors of `Q C_new Q` (InfLoRA's design), so
  `A M = 0`; the fallback is a Gaussian `A·Q`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def project_out(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """`x Q = x − (x M) Mᵀ` for x (..., n) and M (n, k)."""
    if basis.shape[1] == 0:
        return x
    return x - (x @ basis) @ basis.T


def complement_basis(basis: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (n, n−k) of the complement of span(M)."""
    n, k = basis.shape
    if k == 0:
        return torch.eye(n, dtype=basis.dtype)
    q, _ = torch.linalg.qr(basis, mode="complete")  # (n, n): the first k columns span M
    return q[:, k:]


@dataclass
class SubspaceState:
    """Per-layer protected basis `M` (n×k) and the running second moment `S` over `N` tokens."""

    basis: torch.Tensor  # (n, k), orthonormal columns
    second_moment: torch.Tensor  # (n, n), float64
    count: int = 0

    @classmethod
    def empty(cls, n: int) -> SubspaceState:
        return cls(torch.zeros(n, 0), torch.zeros(n, n, dtype=torch.float64), 0)

    @property
    def covariance(self) -> torch.Tensor:
        """`C = S/N` (n×n, float64)."""
        if self.count == 0:
            raise ValueError("no inputs were observed for this layer; nothing to estimate from")
        return self.second_moment / self.count


class Projector:
    """`x ↦ x Q` for a fixed basis, by the cheaper of two exact forms.

    `x − (x M) Mᵀ` costs 2·m·n·k flops for x (m, n); `(x C) Cᵀ`, with C (n, n−k) an orthonormal
    basis of the complement, costs 2·m·n·(n−k). Late in a sequence M holds most of the input
    space, so the second form is many times cheaper (ours: speed only, the same map).
    """

    def __init__(self, basis: torch.Tensor) -> None:
        n, k = basis.shape
        self.basis = basis.float()  # M (n, k)
        self.complement = (
            complement_basis(basis.double().cpu()).float().to(basis.device) if 2 * k > n else None
        )  # (n, n−k) on the basis's device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.complement is not None:
            return (x @ self.complement) @ self.complement.T
        return project_out(x, self.basis)


@dataclass
class CovarianceAccumulator:
    """Adds `XᵀX` of (a uniform subsample of at most `max_tokens` rows of) each input.

    Each call adds into a float32 buffer in one fused `addmm_`; every `flush_every` calls (and
    whenever the sum is read) the buffer is added into the float64 total, so no more than
    `flush_every · max_tokens` tokens are ever summed in float32.
    """

    n: int
    max_tokens: int
    generator: torch.Generator  # on the CPU; subsample indices move to the tokens' device
    flush_every: int = 8
    device: torch.device | str = "cpu"
    count: int = 0
    _total: torch.Tensor = field(init=False, repr=False)  # float64 (n, n)
    _partial: torch.Tensor = field(init=False, repr=False)  # float32 (n, n)
    _pending: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._total = torch.zeros(self.n, self.n, dtype=torch.float64, device=self.device)
        self._partial = torch.zeros(self.n, self.n, device=self.device)

    def __call__(self, tokens: torch.Tensor) -> None:
        x = tokens.float()  # (T, n)
        if x.shape[0] > self.max_tokens:
            idx = torch.randperm(x.shape[0], generator=self.generator)[: self.max_tokens]
            x = x[idx.to(x.device)]  # (T', n): an unbiased estimate of C from fewer tokens
        self._partial.addmm_(x.T, x)  # (n, n)
        self.count += x.shape[0]
        self._pending += 1
        if self._pending >= self.flush_every:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._total += self._partial.double()
            self._partial.zero_()
            self._pending = 0

    @property
    def second_moment(self) -> torch.Tensor:
        """`S = Σ XᵀX` (n×n, float64) over every observed token."""
        self._flush()
        return self._total

    def covariance(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("no inputs were observed for this layer; nothing to estimate from")
        return self.second_moment / self.count


def expand_basis(basis: torch.Tensor, cov: torch.Tensor, eps: float) -> torch.Tensor:
    """Append top eigenvectors of `Q C Q` to `M` until the captured energy reaches `eps`.

    Args:
        basis: M (n, k), orthonormal columns.
        cov: C (n, n), symmetric positive semi-definite.
        eps: energy threshold ε_t in (0, 1].

    Returns:
        The new basis (n, k') with k' ≥ k, re-orthonormalised.
    """
    c = cov.double().cpu()
    m = basis.double().cpu()
    total = torch.trace(c).item()
    if total <= 0:
        return basis
    captured = torch.trace(m.T @ c @ m).item() if m.shape[1] else 0.0  # tr(MᵀCM)
    if captured / total >= eps:
        return basis
    comp = complement_basis(m)  # (n, n−k)
    evals, evecs = torch.linalg.eigh(comp.T @ c @ comp)  # eigenpairs of Q C Q on the complement
    evals, evecs = evals.flip(0).clamp_min(0), (comp @ evecs).flip(1)  # descending, (n, n−k)
    need = eps * total - captured
    cum = torch.cumsum(evals, 0)
    k_add = int(torch.searchsorted(cum, torch.tensor(need, dtype=cum.dtype)).item()) + 1
    k_add = min(k_add, evecs.shape[1])
    new = torch.cat([m, evecs[:, :k_add]], dim=1)  # (n, k + k_add)
    q, _ = torch.linalg.qr(new)  # re-orthonormalise
    return q.to(basis.dtype)  # on the CPU, like the stored basis


def design_a(basis: torch.Tensor, cov_new: torch.Tensor, rank: int) -> torch.Tensor:
    """A (r×n) whose rows are the top-r eigenvectors of `Q C_new Q`; zero rows if n−k < r."""
    n = cov_new.shape[0]
    comp = complement_basis(basis.double().cpu())  # (n, n−k)
    _, evecs = torch.linalg.eigh(comp.T @ cov_new.double().cpu() @ comp)
    top = (comp @ evecs.flip(1))[:, :rank].T  # (min(r, n−k), n)
    a = torch.zeros(rank, n, dtype=torch.float64)
    a[: top.shape[0]] = top
    return a.float()


def random_a(basis: torch.Tensor, n: int, rank: int, generator: torch.Generator) -> torch.Tensor:
    """Gaussian A·Q (r×n), rows of norm about 1/√3 like PEFT's Kaiming-uniform A."""
    a = torch.randn(rank, n, generator=generator) / (3 * n) ** 0.5
    return project_out(a, basis.float().cpu())
