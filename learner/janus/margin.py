"""Decoupled Margin Loss (DML) of Janus-LoRA (DESIGN.md §3).

`f` is the L2-normalised pre-logit feature and `p_c` the normalised mean feature of every class
learned before (stored with the version; no samples kept):

    L_DML = mean_i relu(max_c (cos(f_i, p_c) − m_c))

It is decoupled from the classification loss: cross-entropy sees only the current task's logits,
DML alone pushes new features out of old classes' regions. `L = CE_task + λ·L_DML`.

*(ours)* The margin from the data: with `μ_c` the mean of class c's normalised features,
`‖μ_c‖` is its samples' mean cosine to their own prototype `p_c = μ_c/‖μ_c‖`, and
`p_cᵀ Σ p_c` (Σ the pooled within-class covariance) the variance of that cosine. `m_c =
‖μ_c‖ − z·√(p_cᵀ Σ p_c)`, z = 1.28, sits near the 10th percentile of class c's own cosines: a
new feature closer than that to `p_c` lies where most of class c lies, and only those are pushed.
A fixed margin above every class's typical cosine (0.8 here once) leaves DML almost never active.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from learner.head import ClassStatistics, class_means

_QUANTILE_Z = 1.28  # the standard normal's 90th percentile


def data_margins(stats: ClassStatistics) -> torch.Tensor:
    """Per-class margins m_c (C,) from class statistics (no samples)."""
    norms = stats.means.norm(dim=-1)  # (C,): mean cosine to the own prototype
    protos = F.normalize(stats.means, dim=-1)  # (C, d)
    dof = max(stats.count - stats.num_classes, 1)
    variance = ((protos @ (stats.scatter / dof)) * protos).sum(-1).clamp_min(0)  # (C,) pᵀΣp
    return (norms - _QUANTILE_Z * variance.sqrt()).float()


def decoupled_margin_loss(
    features: torch.Tensor, prototypes: torch.Tensor, margin: float | torch.Tensor
) -> torch.Tensor:
    """DML for features (B, d) against old-class prototypes (C_old, d) and a margin (scalar or
    (C_old,)); 0 with no old class."""
    if prototypes.shape[0] == 0:
        return features.new_zeros(())
    f = F.normalize(features, dim=-1)  # (B, d)
    p = F.normalize(prototypes.to(f.dtype), dim=-1)  # (C_old, d)
    excess = (f @ p.T - torch.as_tensor(margin, dtype=f.dtype)).max(dim=1).values  # (B,)
    return F.relu(excess).mean()


@torch.no_grad()
def invasion_share(features: torch.Tensor, old: ClassStatistics) -> float:
    """Share of features (N, d) closer to some old prototype p_c than its data margin m_c.

    NaN with no old class: nothing to invade.
    """
    if old.num_classes == 0 or len(features) == 0:
        return math.nan
    f = F.normalize(features.double(), dim=-1)  # (N, d)
    p = F.normalize(old.means, dim=-1)  # (C_old, d)
    inside = (f @ p.T > data_margins(old).double()).any(dim=1)  # (N,)
    return inside.double().mean().item()


@torch.no_grad()
def class_prototypes(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Normalised class means (num_classes, d) of L2-normalised features."""
    f = F.normalize(features.float(), dim=-1)  # (N, d)
    return F.normalize(class_means(f, labels, num_classes), dim=-1)
