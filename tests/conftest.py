"""Shared fixtures: tiny timm models and small real data (scikit-learn's bundled digits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.config import BackboneConfig
from learner.data import LabeledBatch

TINY_BACKBONES = {
    "vit": BackboneConfig(
        name="test_vit",
        weights="none",
        input_size=32,
        model_kwargs={"img_size": 32, "patch_size": 8},
    ),
    "convnet": BackboneConfig(name="test_efficientnet", weights="none", input_size=32),
}


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits() -> LabeledBatch:
    """All 1,797 8×8 digits as a grayscale batch (real data, no download)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images * (255 / 16)).round().astype(np.uint8)[..., None]  # (N, 8, 8, 1)
    return LabeledBatch(images, d.target.astype(np.int64), tuple(f"digit{i}" for i in range(10)))
