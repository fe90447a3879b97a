"""Pixels (uint8, at the model's side) to model input in torch, with augmentation for training.

The pixels come from `learner.data.images`, the one image path that serving takes too: decoded,
upright, resized to the model's side. This module is that path's last step in torch (the twin of
`images.model_input`: float (B, 3, S, S) with values 0–255) plus training's augmentation.
Normalisation by the backbone's mean and std is the model's own first step
(`ContinualModel.normalize_pixels`), so it is part of the exported ONNX graph.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_uint8_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 numpy → (N, C, H, W) uint8 tensor, shared memory where possible."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def prepare(
    images: torch.Tensor,
    side: int,
    augment: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 (B, C, S, S), C ∈ {1, 3} → float (B, 3, S, S), pixel values 0–255.

    Augmentation (training only): for each image its own random horizontal flip and its own
    shift of up to 1/8 of the side (edges replicated). The work runs on the images' device; the
    random draws come from `generator` (a CPU generator), so they do not depend on the device.
    """
    if images.shape[-2:] != (side, side):
        raise ValueError(
            f"images are {tuple(images.shape[-2:])}, the model takes {side}×{side}; resize them "
            "with LabeledBatch.resized (the same resize as the service's)"
        )
    x = images.float()  # (B, C, S, S), on the images' device
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)  # grayscale → 3 channels
    if augment:
        b, dev = x.shape[0], x.device
        flip = (torch.rand(b, generator=generator) < 0.5).to(dev)  # drawn on the CPU generator
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        pad = max(side // 8, 1)
        padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")  # (B, 3, S+2p, S+2p)
        dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(dev)  # (B,) each
        offsets = torch.arange(side, device=dev)
        rows = (dy[:, None] + offsets)[:, None, :, None]  # (B, 1, S, 1)
        cols = (dx[:, None] + offsets)[:, None, None, :]  # (B, 1, 1, S)
        batch = torch.arange(b, device=dev)[:, None, None, None]
        x = padded[batch, torch.arange(3, device=dev)[None, :, None, None], rows, cols]
    return x.contiguous()
