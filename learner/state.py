"""The learner's state between tasks, and the model it stands for.

A state is the backbone reference, every task's LoRA factors (in lineage order), the head over all
seen classes, class names, per-layer subspace state, class prototypes and the class statistics the
head is computed from (`learner.head`). The model is always rebuilt from the pristine fp32 base
plus `Σ s·B_t·A_t` over the lineage (DESIGN.md §3, task end): never unmerged, so no drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from learner.backbones import Backbone, InputSpec, create_backbone
from learner.config import BackboneConfig, LoRAConfig
from learner.head import ClassStatistics, cosine_head, linear_logits
from learner.janus.estimation import SubspaceState
from learner.lora.layer import LoRALayer
from learner.lora.model import inject_lora, merge_factors


@dataclass
class LearnerState:
    """Everything needed to rebuild the model and learn the next task; no training data."""

    backbone: BackboneConfig
    lora: LoRAConfig
    class_names: list[str] = field(default_factory=list)
    task_sizes: list[int] = field(default_factory=list)  # classes added by each task
    adapters: list[dict[str, torch.Tensor]] = field(default_factory=list)  # per task: A, B
    head_weight: torch.Tensor | None = None  # (C, d), over L2-normalised features
    head_bias: torch.Tensor | None = None  # (C,)
    subspace: dict[str, SubspaceState] = field(default_factory=dict)
    prototypes: torch.Tensor | None = None  # (C, d), L2-normalised class means
    class_stats: ClassStatistics | None = None  # means and pooled within-class scatter

    @property
    def num_tasks(self) -> int:
        return len(self.task_sizes)

    def meta(self) -> dict[str, object]:
        """JSON-able description (goes into a version's manifest)."""
        return {
            "backbone": self.backbone.model_dump(),
            "lora": self.lora.model_dump(),
            "class_names": list(self.class_names),
            "task_sizes": list(self.task_sizes),
        }

    def to_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """This version's tensors by store file stem: its own task's factors and the rest."""
        if self.head_weight is None or self.head_bias is None or self.prototypes is None:
            raise ValueError("an empty state (no task learned) has no tensors to publish")
        subspace: dict[str, torch.Tensor] = {}
        for name, sub in self.subspace.items():
            subspace[f"{name}.M"] = sub.basis.contiguous()
            subspace[f"{name}.S"] = sub.second_moment.contiguous()
            subspace[f"{name}.N"] = torch.tensor([sub.count], dtype=torch.int64)
        prototypes = {"prototypes": self.prototypes}
        if self.class_stats is not None:
            prototypes |= {
                "means": self.class_stats.means.contiguous(),
                "scatter": self.class_stats.scatter.contiguous(),
                "count": torch.tensor([self.class_stats.count], dtype=torch.int64),
            }
        return {
            "adapter": dict(self.adapters[-1]),
            "head": {"weight": self.head_weight, "bias": self.head_bias},
            "subspace": subspace,
            "prototypes": prototypes,
        }

    @classmethod
    def from_tensors(
        cls,
        meta: dict[str, object],
        lineage_adapters: list[dict[str, torch.Tensor]],
        tensors: dict[str, dict[str, torch.Tensor]],
    ) -> LearnerState:
        """Inverse of `meta()` + `to_tensors()`; `lineage_adapters` root first, this one last."""
        subspace: dict[str, SubspaceState] = {}
        for key, value in tensors["subspace"].items():
            name, _, part = key.rpartition(".")
            sub = subspace.setdefault(name, SubspaceState.empty(0))
            if part == "M":
                sub.basis = value.float()
            elif part == "S":
                sub.second_moment = value.double()
            elif part == "N":
                sub.count = int(value.reshape(-1)[0])
        task_sizes = [int(x) for x in meta["task_sizes"]]  # type: ignore[attr-defined]
        if len(lineage_adapters) != len(task_sizes):
            raise ValueError(
                f"lineage has {len(lineage_adapters)} adapters but the manifest lists "
                f"{len(task_sizes)} tasks; the store is inconsistent — run `janus verify`"
            )
        head, protos = tensors["head"], tensors["prototypes"]
        if "bias" in head:
            weight, bias = head["weight"].float(), head["bias"].float()
        else:  # published before the head had a bias: scale · cos(f, w_c)
            weight, bias = cosine_head(head["weight"], float(head["scale"].reshape(-1)[0]))
        stats = None
        if "scatter" in protos:
            count = int(protos["count"].reshape(-1)[0])
            stats = ClassStatistics(protos["means"].double(), protos["scatter"].double(), count)
        return cls(
            backbone=BackboneConfig.model_validate(meta["backbone"]),
            lora=LoRAConfig.model_validate(meta["lora"]),
            class_names=[str(c) for c in meta["class_names"]],  # type: ignore[attr-defined]
            task_sizes=task_sizes,
            adapters=lineage_adapters,
            head_weight=weight,
            head_bias=bias,
            subspace=subspace,
            prototypes=protos["prototypes"].float(),
            class_stats=stats,
        )


class ContinualModel(nn.Module):
    """Backbone with LoRA layers (earlier tasks merged) and one linear head over seen classes.

    Its input is pixels, float (B, 3, S, S) with values 0–255; normalising them by the backbone's
    mean and std is its first step, so the exported ONNX graph does it too. The head is linear
    over L2-normalised features, `normalize(f) Wᵀ + b` *(ours)*: the LDA head of `learner.head`
    by default, or scaled cosine rows (b = 0).
    """

    def __init__(self, backbone: Backbone, lora: LoRAConfig) -> None:
        super().__init__()
        self.backbone = backbone.model
        self.spec: InputSpec = backbone.spec
        self.num_features = backbone.num_features
        self.layers: dict[str, LoRALayer] = inject_lora(self.backbone, lora)
        mean = torch.tensor(backbone.spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(backbone.spec.std).view(1, 3, 1, 1)
        self.pixel_scale: torch.Tensor
        self.pixel_shift: torch.Tensor
        self.register_buffer("pixel_scale", 1.0 / (255.0 * std))
        self.register_buffer("pixel_shift", -mean / std)
        self.head_weight: torch.Tensor
        self.head_bias: torch.Tensor
        self.register_buffer("head_weight", torch.zeros(0, backbone.num_features))
        self.register_buffer("head_bias", torch.zeros(0))

    @property
    def device(self) -> torch.device:
        """Where the model's tensors are (`.to(device)` moves them all)."""
        return self.pixel_scale.device

    def normalize_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels 0–255 (B, 3, S, S) → the backbone's input, `(x / 255 − mean) / std`."""
        return x * self.pixel_scale + self.pixel_shift

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-logit features (B, d) of pixels (B, 3, S, S), values 0–255 (`learner.inputs`)."""
        return self.backbone(self.normalize_pixels(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) over every seen class, of pixels (B, 3, S, S) with values 0–255."""
        return self.head(self.features(x))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of pre-logit features (B, d)."""
        return linear_logits(features, self.head_weight, self.head_bias)


def build_model(state: LearnerState) -> ContinualModel:
    """Rebuild a state's model from the pristine fp32 base plus its lineage's factors."""
    model = ContinualModel(create_backbone(state.backbone), state.lora)
    for factors in state.adapters:
        merge_factors(model.layers, factors, state.lora.scale)
    if state.head_weight is not None and state.head_bias is not None:
        model.head_weight = state.head_weight.clone()
        model.head_bias = state.head_bias.clone()
    return model.eval()
