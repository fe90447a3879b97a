"""Small versions to publish in store tests: numpy tensors only, no torch."""

from __future__ import annotations

from typing import Any

import fsspec
import numpy as np

from adapters_store import VersionStore
from adapters_store.manifest import ADAPTER, HEAD, ONNX

WEIGHTS = "ab" * 32


def draft(**fields: Any) -> dict[str, Any]:
    """Manifest fields as a dict (`publish` validates them)."""
    base: dict[str, Any] = {
        "method": "janus-lora",
        "hyperparameters": {"rank": 4, "alpha": 8.0, "targets": ["qkv", "proj"]},
        "backbone": {"name": "test_vit", "weights_sha256": WEIGHTS},
        "task_index": 0,
        "classes": ["cat", "dog"],
        "new_classes": ["cat", "dog"],
        "data_digest": "sha256:" + "cd" * 32,
        "metrics": {"accuracy": 0.875},
        "job_id": "job-1",
    }
    base.update(fields)
    return base


def files(seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        ADAPTER: {
            "blocks.0.attn.qkv.lora_A": rng.standard_normal((4, 64)).astype(np.float32),
            "blocks.0.attn.qkv.lora_B": rng.standard_normal((192, 4)).astype(np.float32),
        },
        HEAD: {"weight": rng.standard_normal((2, 64)).astype(np.float32)},
        ONNX: b"not really onnx " + bytes([seed % 256]) * 64,
    }


def publish(store: VersionStore, seed: int = 0, **fields: Any) -> Any:
    activate = fields.pop("activate", False)
    return store.publish(files(seed), draft(**fields), activate=activate, actor="tester")


def raw_fs(uri: str) -> tuple[Any, str]:
    """The fsspec filesystem and root path of a store, to poke at its bytes directly."""
    fs, root = fsspec.core.url_to_fs(uri)
    return fs, root.rstrip("/")


def snapshot(uri: str) -> dict[str, bytes]:
    """Every stored file (store-relative path -> bytes)."""
    fs, root = raw_fs(uri)
    fs.invalidate_cache()
    return {p[len(root) + 1 :]: fs.cat_file(p) for p in fs.find(root)}
