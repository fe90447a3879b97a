"""Backbones from config: the offline EfficientNet-Lite0 weights, a local file, random init."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from learner.backbones import LITE0_MEAN, create_backbone, save_backbone_weights
from learner.config import BackboneConfig
from tests.conftest import TINY_BACKBONES


def test_offline_lite0_weights_load_into_timm() -> None:
    bb = create_backbone(BackboneConfig(input_size=64))
    assert bb.num_features == 1280
    assert bb.spec.size == 64 and bb.spec.mean == LITE0_MEAN  # (x − 127) / 128
    assert len(bb.digest) == 64
    stem = bb.model.conv_stem.weight
    assert stem.std() > 0.05  # pretrained, not timm's random init of the same shape
    again = create_backbone(BackboneConfig(input_size=64))
    assert again.digest == bb.digest
    assert again.model is not bb.model  # a fresh module each time, same pristine weights
    assert torch.equal(again.model.conv_stem.weight, stem)


def test_lite0_features_separate_real_classes(digits) -> None:
    """Pretrained features: a nearest-class-mean on digits beats chance by far."""
    from learner.config import LoRAConfig
    from learner.inputs import prepare, to_uint8_tensor
    from learner.state import ContinualModel

    model = ContinualModel(create_backbone(BackboneConfig(input_size=64)), LoRAConfig())
    x = prepare(to_uint8_tensor(digits.subset(range(400)).resized(64).images), 64)
    with torch.no_grad():
        f = torch.nn.functional.normalize(model.features(x), dim=1)
    y = torch.from_numpy(digits.labels[:400])
    means = torch.stack([f[:200][y[:200] == c].mean(0) for c in range(10)])
    acc = ((f[200:] @ means.T).argmax(1) == y[200:]).float().mean()
    assert acc > 0.6


def test_file_weights_round_trip(tmp_path: Path) -> None:
    cfg = TINY_BACKBONES["vit"]
    path = save_backbone_weights(cfg, tmp_path / "vit.safetensors")
    loaded = create_backbone(cfg.model_copy(update={"weights": "file", "path": str(path)}))
    assert loaded.digest == create_backbone(cfg).digest


def test_bad_backbone_configs_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs path"):
        BackboneConfig(name="test_vit", weights="file")
    with pytest.raises(ValueError, match="only fits"):
        BackboneConfig(name="test_vit", weights="efficientnet-lite0")
    missing = BackboneConfig(
        name="test_vit", weights="file", path=str(tmp_path / "nope.safetensors")
    )
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        create_backbone(missing)


@pytest.mark.slow
def test_paper_vit_config_builds_through_the_same_code() -> None:
    """The paper's ViT-B/16 by name (random init here: its hub weights are not reachable)."""
    from learner.config import LoRAConfig
    from learner.lora.model import inject_lora

    bb = create_backbone(BackboneConfig(name="vit_base_patch16_224.augreg_in21k", weights="none"))
    assert bb.num_features == 768 and bb.spec.size == 224
    layers = inject_lora(bb.model, LoRAConfig())
    assert len(layers) == 24  # K and V of 12 blocks, each its own adapter
    assert all(
        layer.rows == ((768, 1536) if name.endswith(".k") else (1536, 2304))
        for name, layer in layers.items()
    )


def test_random_init_is_the_same_in_every_process() -> None:
    """weights='none' (tiny test models) must rebuild identically elsewhere, e.g. a worker."""
    import subprocess
    import sys

    code = (
        "from tests.conftest import TINY_BACKBONES;"
        "from learner.backbones import create_backbone;"
        "print(create_backbone(TINY_BACKBONES['convnet']).digest)"
    )
    torch.manual_seed(123)  # the caller's RNG state must not matter
    here = create_backbone(TINY_BACKBONES["convnet"]).digest
    there = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout.strip()
    assert there == here
