"""Evaluation sets: labeled images kept for evaluating candidates, never for training.

    evalsets/<sha256>.safetensors   the images, still encoded (PNG, JPEG, …) as they arrived,
                                    concatenated in `data` (uint8) with `offsets` (int64, N + 1)
                                    and `labels` (int64, N) into the class names of its metadata
    evalsets/<sha256>.json          what it holds (classes and counts, kind, source, time);
                                    written second, so a set is listed only once it is complete

A set is named by the sha256 of its file, so it is immutable and checked on every read. Two kinds:
`holdout` (a learn job's sample of each new class, taken from its held-out images) and `golden`
(a set a user attaches, `janus eval add PATH`). The images stay encoded: whoever evaluates
decodes them through the one image path, at its model's side.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, NonNegativeInt
from safetensors import SafetensorError
from safetensors.numpy import load, save

from adapters_store import paths
from adapters_store._backend import Backend
from adapters_store.errors import IntegrityError, InvalidManifest, NotFound
from adapters_store.manifest import Sha256, Text

EVALSETS = "evalsets"
Kind = Literal["holdout", "golden"]


class EvalSetInfo(BaseModel):
    """What an evaluation set holds (its `.json`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    digest: Sha256
    kind: Kind
    source: Text = Field(description="the job or the path it came from")
    classes: dict[Text, NonNegativeInt] = Field(description="images per class")
    created_at: AwareDatetime

    @property
    def images(self) -> int:
        return sum(self.classes.values())


@dataclass(frozen=True)
class EvalImages:
    """The images of one or several evaluation sets: encoded bytes and their class names."""

    images: tuple[bytes, ...]
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)


def _path(digest: str, suffix: str) -> str:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise NotFound(f"{digest!r} is not an evaluation set digest (64 hex digits)")
    return paths.rel(EVALSETS, f"{digest}{suffix}")


def encode(images: Sequence[bytes], labels: Sequence[str]) -> bytes:
    """The safetensors bytes of a set (deterministic: same images, same digest)."""
    if len(images) != len(labels) or not images:
        raise InvalidManifest(
            f"an evaluation set needs one label per image and at least one image; got "
            f"{len(images)} images and {len(labels)} labels"
        )
    names = sorted(set(labels))
    index = {name: i for i, name in enumerate(names)}
    sizes = np.array([len(b) for b in images], dtype=np.int64)
    arrays: dict[str, np.ndarray] = {
        "data": np.frombuffer(b"".join(images), dtype=np.uint8),
        "offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        "labels": np.array([index[name] for name in labels], dtype=np.int64),
    }
    return bytes(save(arrays, metadata={"classes": json.dumps(names)}))


def decode(digest: str, raw: bytes) -> EvalImages:
    """The images of a set's file, after checking its bytes against its name."""
    name = f"{digest}.safetensors"
    if hashlib.sha256(raw).hexdigest() != digest:
        raise IntegrityError(None, f"{EVALSETS}/{name}", "sha256 differs from its name")
    try:
        arrays = load(raw)
        names = json.loads(_metadata(raw)["classes"])
        data, offsets, labels = arrays["data"], arrays["offsets"], arrays["labels"]
        images = tuple(data[int(a) : int(b)].tobytes() for a, b in itertools.pairwise(offsets))
        return EvalImages(images, tuple(str(names[int(i)]) for i in labels))
    except (SafetensorError, KeyError, ValueError, IndexError, TypeError) as err:
        raise IntegrityError(None, f"{EVALSETS}/{name}", f"not an evaluation set ({err})") from None


def _metadata(raw: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors header."""
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    return dict(header.get("__metadata__") or {})


class EvalSets:
    """One store's evaluation sets."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def add(
        self, images: Sequence[bytes], labels: Sequence[str], *, kind: Kind, source: str
    ) -> EvalSetInfo:
        """Stores a set (or finds the same one already stored) and returns what it holds."""
        raw = encode(images, labels)
        digest = hashlib.sha256(raw).hexdigest()
        try:
            return self.info(digest)
        except NotFound:
            pass
        info = EvalSetInfo(
            digest=digest,
            kind=kind,
            source=source[:200] or "-",
            classes=dict(sorted(Counter(labels).items())),
            created_at=datetime.now(UTC),
        )
        self._backend.write(_path(digest, ".safetensors"), raw)
        self._backend.write(_path(digest, ".json"), info.model_dump_json().encode())
        return info

    def info(self, digest: str) -> EvalSetInfo:
        try:
            raw = self._backend.read(_path(digest, ".json"))
        except FileNotFoundError:
            raise NotFound(
                f"no evaluation set {digest} in store {self._backend.uri}; "
                "list them with `janus eval list`"
            ) from None
        try:
            return EvalSetInfo.model_validate_json(raw)
        except ValueError as err:
            raise IntegrityError(None, f"{EVALSETS}/{digest}.json", str(err)) from None

    def sets(self) -> list[EvalSetInfo]:
        """Every complete set, oldest first."""
        found = []
        for name in self._backend.listdir(EVALSETS):
            if name.endswith(".json"):
                found.append(self.info(name.removesuffix(".json")))
        return sorted(found, key=lambda info: (info.created_at, info.digest))

    def read(self, digest: str) -> EvalImages:
        try:
            raw = self._backend.read(_path(digest, ".safetensors"))
        except FileNotFoundError:
            raise NotFound(
                f"evaluation set {digest} has no images in {self._backend.uri}"
            ) from None
        return decode(digest, raw)

    def delete(self, digest: str) -> None:
        """Removes a set (listing first, so it is never listed without its images)."""
        self.info(digest)
        self._backend.delete(_path(digest, ".json"))
        self._backend.delete(_path(digest, ".safetensors"))
