"""Injects LoRA layers into a timm model by module-name patterns; factors out and in as tensors.

Defaults follow DESIGN.md §3: ViT — the K and V rows of every fused `attn.qkv` (Q untouched), K
and V each with its own adapter, named `<qkv>.k` and `<qkv>.v`; ConvNets — every 1x1 convolution.
"""

from __future__ import annotations

from fnmatch import fnmatch

import torch
from torch import nn

from learner.config import LoRAConfig
from learner.lora.layer import LoRALayer


def _is_fused_qkv(name: str, module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Linear)
        and name.endswith("qkv")
        and module.out_features == 3 * module.in_features
    )


def _is_pointwise_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1


def _default_match(name: str, module: nn.Module) -> bool:
    return _is_fused_qkv(name, module) or _is_pointwise_conv(module)


def find_targets(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Names of the modules LoRA goes on, in model order."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, LoRALayer) or any(fnmatch(name, p) for p in cfg.exclude):
            continue
        if cfg.targets is None:
            hit = _default_match(name, module)
        else:
            hit = any(fnmatch(name, p) for p in cfg.targets)
            if hit and not (isinstance(module, nn.Linear) or _is_pointwise_conv(module)):
                raise ValueError(
                    f"LoRA target {name!r} is a {type(module).__name__}; targets must be "
                    "nn.Linear or 1x1 nn.Conv2d — narrow the pattern in lora.targets"
                )
        if hit:
            names.append(name)
    if not names:
        raise ValueError(
            f"no module matches the LoRA targets {cfg.targets}; list names with "
            "`[n for n, _ in model.named_modules()]` and set lora.targets"
        )
    return names


def inject_lora(model: nn.Module, cfg: LoRAConfig) -> dict[str, LoRALayer]:
    """Replace every target module by a LoRALayer wrapping it; returns them by name."""
    layers: dict[str, LoRALayer] = {}
    for name in find_targets(model, cfg):
        module = model.get_submodule(name)
        if isinstance(module, nn.Linear) and _is_fused_qkv(name, module):
            d = module.in_features  # rows of the fused (Q; K; V) weight: K d..2d, V 2d..3d
            k = LoRALayer(module, cfg.rank, cfg.alpha, rows=(d, 2 * d), tag="k")
            layer = LoRALayer(k, cfg.rank, cfg.alpha, rows=(2 * d, 3 * d), tag="v")
            layers[f"{name}.k"], layers[f"{name}.v"] = k, layer
        else:
            layer = LoRALayer(module, cfg.rank, cfg.alpha)
            layers[name] = layer
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
    return layers


def lora_layers(model: nn.Module) -> dict[str, LoRALayer]:
    """The LoRA layers of an injected model, named as `inject_lora` names them: the module they
    replaced, plus `.k` / `.v` for the two adapters of a fused qkv."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALayer):
            while name.endswith(".base_layer"):
                name = name.removesuffix(".base_layer")
            out[f"{name}.{module.tag}" if module.tag else name] = module
    return out


def get_factors(layers: dict[str, LoRALayer]) -> dict[str, torch.Tensor]:
    """The current task's factors as plain CPU tensors: `<layer>.A` (r×n), `<layer>.B` (m×r)."""
    out = {}
    for name, layer in layers.items():
        out[f"{name}.A"] = layer.lora_A.detach().cpu().clone().contiguous()
        out[f"{name}.B"] = layer.lora_B.detach().cpu().clone().contiguous()
    return out


@torch.no_grad()
def merge_factors(
    layers: dict[str, LoRALayer], factors: dict[str, torch.Tensor], scale: float
) -> None:
    """Add `scale·B·A` of stored factors into each layer's fp32 base weight."""
    expected = {f"{n}.{k}" for n in layers for k in ("A", "B")}
    if set(factors) != expected:
        missing, extra = sorted(expected - set(factors)), sorted(set(factors) - expected)
        raise ValueError(
            f"adapter factors do not fit this model (missing {missing[:3]}, extra {extra[:3]}); "
            "was it trained on another backbone or LoRA target set?"
        )
    for name, layer in layers.items():
        a, b = factors[f"{name}.A"].float(), factors[f"{name}.B"].float()  # (r, n), (m, r)
        r0, r1 = layer.rows
        layer.weight_2d[r0:r1] += scale * (b @ a)  # (m, n)
