"""Decoupled Margin Loss (DML) of Janus-LoRA (DESIGN.md §3).

`f` is the L2-normalised pre-logit feature and `p_c` the normalised mean feature of every class
learned before (stored with the version; no samples kept):

    L_DML = mean_i relu(max_c cos(f_i, p_c) − m)

It is decoupled from the classification loss: cross-entropy sees only the current task's logits,
DML alone pushes new features out of old classes' regions. `L = CE_task + λ·L_DML`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from learner.head import class_means


def decoupled_margin_loss(
    features: torch.Tensor, prototypes: torch.Tensor, margin: float
) -> torch.Tensor:
    """DML for features (B, d) against old-class prototypes (C_old, d); 0 with no old class."""
    if prototypes.shape[0] == 0:
        return features.new_zeros(())
    f = F.normalize(features, dim=-1)  # (B, d)
    p = F.normalize(prototypes.to(f.dtype), dim=-1)  # (C_old, d)
    nearest = (f @ p.T).max(dim=1).values  # (B,): max_c cos(f_i, p_c)
    return F.relu(nearest - margin).mean()


@torch.no_grad()
def class_prototypes(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Normalised class means (num_classes, d) of L2-normalised features."""
    f = F.normalize(features.float(), dim=-1)  # (N, d)
    return F.normalize(class_means(f, labels, num_classes), dim=-1)
