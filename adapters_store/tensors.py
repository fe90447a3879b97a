"""Tensors in and out of the store, through safetensors only (no pickle, no `torch.load`).

The store never imports torch: callers pass numpy arrays (`tensor.detach().cpu().numpy()`) and
get numpy arrays back (`torch.from_numpy(array)`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from adapters_store.errors import IntegrityError, InvalidManifest

Tensors = Mapping[str, np.ndarray]
FileContent = bytes | Tensors
"""What `publish` accepts per file: raw bytes, or named numpy arrays for a `.safetensors` file."""

SUFFIX = ".safetensors"


def encode_file(name: str, content: object) -> bytes:
    """The bytes to store for one file given to `publish`."""
    if isinstance(content, bytes | bytearray | memoryview):
        data = bytes(content)
        if name.endswith(SUFFIX):
            try:
                load(data)
            except (SafetensorError, ValueError) as err:
                raise InvalidManifest(f"{name} is not a valid safetensors file ({err})") from None
        return data
    if isinstance(content, Mapping):
        if not name.endswith(SUFFIX):
            raise InvalidManifest(
                f"{name}: tensors can only be stored in a '{SUFFIX}' file; pass bytes otherwise"
            )
        arrays = {}
        for key, value in content.items():
            if not isinstance(key, str) or not isinstance(value, np.ndarray):
                raise InvalidManifest(
                    f"{name}: tensor {key!r} must map a str to a numpy array, got "
                    f"{type(value).__name__} (convert torch tensors with .cpu().numpy())"
                )
            arrays[key] = np.ascontiguousarray(value)
        try:
            return save(arrays)
        except (SafetensorError, ValueError, TypeError) as err:
            raise InvalidManifest(f"{name}: cannot serialise with safetensors ({err})") from None
    raise InvalidManifest(
        f"{name}: expected bytes or a dict of numpy arrays, got {type(content).__name__}"
    )


def decode_tensors(version_id: str, name: str, data: bytes) -> dict[str, np.ndarray]:
    """Named arrays of a verified `.safetensors` file."""
    try:
        return load(data)
    except (SafetensorError, ValueError) as err:
        raise IntegrityError(version_id, name, f"not a valid safetensors file ({err})") from None
