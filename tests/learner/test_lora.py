"""LoRA layers and injector, tested once over a table of tiny models (PEFT style)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from learner.backbones import create_backbone
from learner.config import LoRAConfig
from learner.lora.layer import LoRALayer
from learner.lora.model import get_factors, inject_lora, lora_layers, merge_factors
from tests.conftest import TINY_BACKBONES


def _fill_factors(layers: dict[str, LoRALayer]) -> None:
    for layer in layers.values():
        layer.reset_factors(torch.randn(layer.rank, layer.in_features))
        with torch.no_grad():
            layer.lora_B.normal_(0, 0.1)


@pytest.fixture(params=sorted(TINY_BACKBONES))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_b_zero_gives_base_output(kind: str) -> None:
    backbone = create_backbone(TINY_BACKBONES[kind])
    x = torch.randn(2, 3, 32, 32)
    base = backbone.model(x)
    layers = inject_lora(backbone.model, LoRAConfig(rank=4))
    for layer in layers.values():
        layer.reset_factors(torch.randn(layer.rank, layer.in_features))  # B = 0
    assert torch.equal(backbone.model(x), base)


def test_merged_equals_unmerged(kind: str) -> None:
    backbone = create_backbone(TINY_BACKBONES[kind])
    x = torch.randn(2, 3, 32, 32)
    base = backbone.model(x)
    layers = inject_lora(backbone.model, LoRAConfig(rank=4))
    _fill_factors(layers)
    unmerged = backbone.model(x)
    assert not torch.allclose(unmerged, base, atol=1e-4)  # the adapters do change the output
    for layer in layers.values():
        layer.merge()
    assert not any(layer.active for layer in layers.values())
    merged = backbone.model(x)
    assert torch.allclose(merged, unmerged, rtol=1e-4, atol=1e-5)


def test_factors_out_and_in_rebuild_the_same_weights(kind: str) -> None:
    backbone = create_backbone(TINY_BACKBONES[kind])
    cfg = LoRAConfig(rank=4, alpha=8)
    layers = inject_lora(backbone.model, cfg)
    _fill_factors(layers)
    factors = get_factors(layers)
    for layer in layers.values():
        layer.merge()
    fresh = create_backbone(TINY_BACKBONES[kind])
    fresh_layers = inject_lora(fresh.model, cfg)
    merge_factors(fresh_layers, factors, cfg.scale)
    for name, layer in layers.items():
        assert torch.allclose(layer.weight_2d, fresh_layers[name].weight_2d, atol=1e-6)


def test_vit_adapts_k_and_v_rows_with_separate_adapters() -> None:
    bb = create_backbone(TINY_BACKBONES["vit"])
    layers = inject_lora(bb.model, LoRAConfig(rank=4))
    qkvs = sorted({name.rpartition(".")[0] for name in layers})
    assert qkvs and all(name.endswith("attn.qkv") for name in qkvs)
    assert sorted(layers) == sorted(f"{q}.{t}" for q in qkvs for t in ("k", "v"))
    assert lora_layers(bb.model) == layers  # the same names from the model alone
    k, v = layers[f"{qkvs[0]}.k"], layers[f"{qkvs[0]}.v"]
    d = k.in_features
    assert (k.rows, v.rows) == ((d, 2 * d), (2 * d, 3 * d))
    assert k.weight_2d.data_ptr() == v.weight_2d.data_ptr()  # one fused weight
    qkv = bb.model.get_submodule(qkvs[0])
    x = torch.randn(5, d)
    before = qkv(x)
    _fill_factors({"k": k})  # only K's adapter
    after_k = qkv(x)
    assert torch.equal(after_k[:, :d], before[:, :d])  # Q untouched
    assert not torch.allclose(after_k[:, d : 2 * d], before[:, d : 2 * d])  # K adapted
    assert torch.equal(after_k[:, 2 * d :], before[:, 2 * d :])  # V not by K's adapter
    _fill_factors({"v": v})
    after = qkv(x)
    assert torch.equal(after[:, : 2 * d], after_k[:, : 2 * d])
    assert not torch.allclose(after[:, 2 * d :], before[:, 2 * d :])
    assert k.lora_A.data_ptr() != v.lora_A.data_ptr()


def test_convnet_targets_are_the_1x1_convolutions() -> None:
    bb = create_backbone(TINY_BACKBONES["convnet"])
    layers = inject_lora(bb.model, LoRAConfig(rank=2))
    expected = [
        n
        for n, m in create_backbone(TINY_BACKBONES["convnet"]).model.named_modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
    ]
    assert list(layers) == expected
    assert lora_layers(bb.model).keys() == layers.keys()


def test_bad_target_pattern_is_refused() -> None:
    bb = create_backbone(TINY_BACKBONES["convnet"])
    with pytest.raises(ValueError, match="no module matches"):
        inject_lora(bb.model, LoRAConfig(targets=("nothing.*",)))
    with pytest.raises(ValueError, match="bn1"):
        inject_lora(bb.model, LoRAConfig(targets=("bn1",)))


def test_merge_factors_refuses_foreign_adapters() -> None:
    bb = create_backbone(TINY_BACKBONES["convnet"])
    layers = inject_lora(bb.model, LoRAConfig(rank=2))
    with pytest.raises(ValueError, match="do not fit"):
        merge_factors(layers, {"blocks.0.A": torch.zeros(1)}, 1.0)
