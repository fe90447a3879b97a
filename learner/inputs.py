"""Images (uint8 N×H×W×C) to normalised backbone inputs, with light augmentation for training."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from learner.backbones import InputSpec


def to_uint8_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 numpy → (N, C, H, W) uint8 tensor, shared memory where possible."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def prepare(
    images: torch.Tensor,
    spec: InputSpec,
    augment: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 (B, C, H, W), C ∈ {1, 3} → float (B, 3, S, S) normalised by the backbone's spec.

    Augmentation (training only): random horizontal flip and a shift of up to 1/8 of the side.
    """
    x = images.float() / 255.0  # (B, C, H, W)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)  # grayscale → 3 channels
    if x.shape[-2:] != (spec.size, spec.size):
        x = F.interpolate(x, size=(spec.size, spec.size), mode="bilinear", align_corners=False)
    if augment:
        b = x.shape[0]
        flip = torch.rand(b, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        pad = max(spec.size // 8, 1)
        padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")  # (B, 3, S+2p, S+2p)
        dy, dx = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
        x = padded[:, :, dy : dy + spec.size, dx : dx + spec.size]
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()
