"""Learner state ⇄ version store (DESIGN.md §4).

A version holds its own task's LoRA factors, the full head, the subspace state and the prototypes
(safetensors), the merged model as ONNX, and in its manifest's hyper-parameters the state's
description (`LearnerState.meta()`) and the training config. A state is rebuilt from a version by
walking its lineage to the root and collecting every task's factors, root first.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np
import torch

from adapters_store import Manifest, ManifestDraft, VersionStore
from adapters_store.manifest import ADAPTER, HEAD, ONNX, PROTOTYPES, SUBSPACE, Evaluation
from adapters_store.tensors import FileContent
from learner.backbones import create_backbone
from learner.config import BackboneConfig, TrainConfig
from learner.state import LearnerState

FILES = {"adapter": ADAPTER, "head": HEAD, "subspace": SUBSPACE, "prototypes": PROTOTYPES}
"""`LearnerState.to_tensors()` keys → the version's file names."""


def backbone_digest(cfg: BackboneConfig) -> str:
    """sha256 of the backbone's pristine weights (the manifest's `backbone.weights_sha256`)."""
    return create_backbone(cfg).digest


def finite_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics a manifest can hold (finite numbers only)."""
    return {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}


def state_files(state: LearnerState, onnx: bytes | None = None) -> dict[str, FileContent]:
    """A state's files for `VersionStore.publish`: numpy arrays by file, plus the ONNX bytes."""
    files: dict[str, FileContent] = {
        FILES[stem]: {k: t.detach().cpu().contiguous().numpy() for k, t in tensors.items()}
        for stem, tensors in state.to_tensors().items()
    }
    if onnx is not None:
        files[ONNX] = onnx
    return files


def state_draft(
    state: LearnerState,
    cfg: TrainConfig,
    *,
    parent: str | None,
    data_digest: str,
    metrics: Mapping[str, float],
    job_id: str | None = None,
    idempotency_key: str | None = None,
    evaluation: Evaluation | None = None,
) -> ManifestDraft:
    """The manifest fields of a state just learned on top of `parent`."""
    new = state.task_sizes[-1]
    return ManifestDraft.model_validate(
        {
            "parent": parent,
            "method": cfg.method.name,
            "hyperparameters": {
                "state": json.loads(json.dumps(state.meta())),  # tuples → lists
                "train": cfg.model_dump(mode="json"),
            },
            "backbone": {
                "name": state.backbone.name,
                "weights_sha256": backbone_digest(state.backbone),
            },
            "task_index": state.num_tasks - 1,
            "classes": list(state.class_names),
            "new_classes": list(state.class_names[-new:]),
            "data_digest": data_digest,
            "metrics": finite_metrics(metrics),
            "job_id": job_id,
            "idempotency_key": idempotency_key,
            "evaluation": evaluation.model_dump(mode="json") if evaluation else None,
        }
    )


def publish_state(
    store: VersionStore,
    state: LearnerState,
    cfg: TrainConfig,
    *,
    parent: str | None,
    data_digest: str,
    metrics: Mapping[str, float],
    onnx: bytes | None = None,
    job_id: str | None = None,
    idempotency_key: str | None = None,
    evaluation: Evaluation | None = None,
    activate: bool = False,
    actor: str | None = None,
    reason: str = "",
) -> Manifest:
    """Publishes a learned state as a new immutable version (atomic: all files or nothing)."""
    draft = state_draft(
        state,
        cfg,
        parent=parent,
        data_digest=data_digest,
        metrics=metrics,
        job_id=job_id,
        idempotency_key=idempotency_key,
        evaluation=evaluation,
    )
    files = state_files(state, onnx)
    return store.publish(files, draft, activate=activate, actor=actor, reason=reason)


def _torch(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()}


def _state_meta(manifest: Manifest) -> dict[str, object]:
    raw = manifest.hyperparameters.get("state")
    if not isinstance(raw, dict):
        raise ValueError(
            f"version {manifest.id} has no learner state in its manifest "
            "(hyperparameters.state); it was not published by the learner"
        )
    return dict(raw)


def state_backbone(manifest: Manifest) -> BackboneConfig:
    """The backbone a version was learned with."""
    return BackboneConfig.model_validate(_state_meta(manifest)["backbone"])


def load_state(store: VersionStore, version_id: str) -> LearnerState:
    """The learner state of a version: its lineage's factors (root first) and its own tensors."""
    lineage = store.lineage(version_id)[::-1]  # root first
    manifest = lineage[-1]
    meta = _state_meta(manifest)
    adapters = [_torch(store.read_tensors(m.id, ADAPTER)) for m in lineage]
    tensors = {stem: _torch(store.read_tensors(version_id, name)) for stem, name in FILES.items()}
    state = LearnerState.from_tensors(meta, adapters, tensors)
    if state.class_names != list(manifest.classes):
        raise ValueError(
            f"version {version_id}: manifest classes differ from its learner state; "
            "the store is inconsistent — run `janus verify`"
        )
    return state
