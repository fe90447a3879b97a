"""Version manifests (DESIGN.md §4): what a version is, where it came from, and its files' digests.

A manifest is stored as canonical JSON (sorted keys, 2-space indent, ASCII) carrying a sha256 of
its own content, so that any changed byte in `manifest.json` is detected, like in a data file.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    JsonValue,
    NonNegativeInt,
    ValidationError,
    model_validator,
)

from adapters_store.errors import IntegrityError, StoreError
from adapters_store.paths import MANIFEST, check_file_name, check_key, check_version_id

SCHEMA_VERSION = 1

ADAPTER = "adapter.safetensors"
HEAD = "head.safetensors"
SUBSPACE = "subspace.safetensors"
PROTOTYPES = "prototypes.safetensors"
ONNX = "model.onnx"
"""Conventional file names of a version (DESIGN.md §4); the store accepts any allowed name."""


def plain_text(value: str) -> str:
    """Refuses control and format characters (newlines, NUL, bidi overrides) in display text."""
    for char in value:
        if unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co", "Cn"}:
            raise ValueError(f"character {char!r} is not allowed here")
    return value


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Text = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(plain_text)]
VersionId = Annotated[str, AfterValidator(check_version_id)]
Key = Annotated[str, AfterValidator(check_key)]
FileName = Annotated[str, AfterValidator(check_file_name)]


class Backbone(BaseModel):
    """The frozen backbone every version of a lineage is trained on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-/]{1,200}$", description="timm model name")
    weights_sha256: Sha256 = Field(description="sha256 of the pretrained weights file")


class FileEntry(BaseModel):
    """Digest and size of one file of a version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: Sha256
    size: NonNegativeInt


class ClassScore(BaseModel):
    """One class of an evaluation: its images, the candidate's accuracy (percent), and the
    serving version's on the same images when it knows the class."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    images: NonNegativeInt
    accuracy: FiniteFloat
    serving_accuracy: FiniteFloat | None = None

    @property
    def change(self) -> float | None:
        """Points gained (negative: lost) against the serving version."""
        return None if self.serving_accuracy is None else self.accuracy - self.serving_accuracy


class Gate(BaseModel):
    """The promotion gate's verdict on a candidate, and the thresholds it applied."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    passed: bool
    reasons: list[Annotated[str, Field(max_length=2000), AfterValidator(plain_text)]] = Field(
        default_factory=list, description="why it failed (empty when it passed)"
    )
    min_new_accuracy: FiniteFloat = Field(description="new-class accuracy needed (percent)")
    max_old_drop: FiniteFloat = Field(description="old-class accuracy it may lose (points)")
    max_forgetting: FiniteFloat | None = Field(
        None, description="old-class accuracy among the old classes only it may lose (points)"
    )


class Evaluation(BaseModel):
    """A candidate evaluated against the version serving when it was published, on the union of
    the evaluation sets that cover their classes (images no training ever read)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    against: VersionId | None = Field(description="the serving version compared with")
    sets: list[Sha256] = Field(default_factory=list, description="evaluation sets used")
    added: list[Sha256] = Field(
        default_factory=list, description="evaluation sets this version's job set aside"
    )
    new_accuracy: FiniteFloat | None = Field(None, description="on the new classes (percent)")
    old_accuracy: FiniteFloat | None = Field(None, description="on the serving version's classes")
    old_accuracy_serving: FiniteFloat | None = Field(
        None, description="the serving version's own accuracy on those images"
    )
    old_accuracy_among_old: FiniteFloat | None = Field(
        None,
        description="the candidate on the same images choosing among the old classes only: "
        "what it forgot, without its confusion with the new classes",
    )
    per_class: dict[Text, ClassScore] = Field(default_factory=dict)
    gate: Gate | None = Field(None, description="the gate's verdict (none: activation 'auto')")

    @property
    def old_drop(self) -> float | None:
        """Points of old-class accuracy lost against the serving version."""
        if self.old_accuracy is None or self.old_accuracy_serving is None:
            return None
        return self.old_accuracy_serving - self.old_accuracy

    @property
    def rejected(self) -> str | None:
        """Why the gate rejected the candidate (None: it passed, or no gate was applied)."""
        if self.gate is None or self.gate.passed:
            return None
        return "; ".join(self.gate.reasons) or "the gate rejected it"

    @property
    def forgetting(self) -> float | None:
        """Points of old-class accuracy lost when the candidate chooses among the old classes
        only (the rest of `old_drop` is confusion with the new classes)."""
        if self.old_accuracy_among_old is None or self.old_accuracy_serving is None:
            return None
        return self.old_accuracy_serving - self.old_accuracy_among_old


class ManifestDraft(BaseModel):
    """The manifest fields a publisher supplies; the store adds id, time and file digests."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    parent: VersionId | None = Field(None, description="version this one was trained from")
    method: Text = Field(description="training method, e.g. 'janus-lora'")
    hyperparameters: dict[str, JsonValue] = Field(default_factory=dict)
    backbone: Backbone
    task_index: NonNegativeInt = Field(description="0 for the first task")
    classes: list[Text] = Field(min_length=1, description="class names in head order")
    new_classes: list[Text] = Field(
        default_factory=list, description="the classes this version added"
    )
    data_digest: Annotated[str, Field(pattern=r"^[A-Za-z0-9:_.\-]{1,200}$")] = Field(
        description="digest of the training data, e.g. 'sha256:…'"
    )
    metrics: dict[Text, FiniteFloat] = Field(default_factory=dict, description="e.g. accuracy")
    job_id: Key | None = None
    idempotency_key: Key | None = None
    evaluation: Evaluation | None = Field(
        None, description="the candidate against the serving version, and the gate's verdict"
    )

    @model_validator(mode="after")
    def _classes_consistent(self) -> ManifestDraft:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes contains duplicates")
        if len(set(self.new_classes)) != len(self.new_classes):
            raise ValueError("new_classes contains duplicates")
        unknown = [name for name in self.new_classes if name not in self.classes]
        if unknown:
            raise ValueError(f"new_classes {unknown} are not in classes")
        return self


class Manifest(ManifestDraft):
    """A published version's manifest (`versions/<id>/manifest.json`)."""

    schema_version: Literal[1] = 1
    id: VersionId
    created_at: AwareDatetime
    files: dict[FileName, FileEntry] = Field(min_length=1)
    digest: Sha256 = Field(description="sha256 of the canonical JSON of all other fields")

    @classmethod
    def build(
        cls,
        draft: ManifestDraft,
        version_id: str,
        created_at: datetime,
        files: dict[str, FileEntry],
    ) -> Manifest:
        """Builds a manifest from a draft, filling in its self-digest."""
        body = _body(draft)
        body.update(
            schema_version=SCHEMA_VERSION,
            id=version_id,
            created_at=created_at,
            files={name: entry.model_dump() for name, entry in files.items()},
        )
        body = _body(cls.model_validate({**body, "digest": "0" * 64}))
        body["digest"] = hashlib.sha256(_canonical(_without_digest(body))).hexdigest()
        return cls.model_validate(body)

    @property
    def rejected(self) -> str | None:
        """Why the gate rejected this version (None: it was not rejected)."""
        return self.evaluation.rejected if self.evaluation else None

    @property
    def accuracy(self) -> float | None:
        """The version's headline accuracy: `accuracy`, else the learn job's held-out figure."""
        for key in ("accuracy", "holdout_accuracy_new"):
            if key in self.metrics:
                return self.metrics[key]
        return None


OPTIONAL = ("evaluation",)
"""Fields added after the first manifests: left out of the canonical form while unset, so a
manifest written before them keeps its bytes and its digest."""


def _body(model: BaseModel) -> dict[str, Any]:
    body: dict[str, Any] = model.model_dump(mode="json")
    return {k: v for k, v in body.items() if not (k in OPTIONAL and v is None)}


def _without_digest(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != "digest"}


def _canonical(body: dict[str, Any]) -> bytes:
    text = json.dumps(body, indent=2, sort_keys=True, ensure_ascii=True, allow_nan=False)
    return text.encode("ascii") + b"\n"


def encode_manifest(manifest: Manifest) -> bytes:
    """The exact bytes stored as `manifest.json`."""
    return _canonical(_body(manifest))


def decode_manifest(raw: bytes, version_id: str) -> Manifest:
    """Parses and checks a stored manifest; any altered byte raises `IntegrityError`."""

    def corrupt(detail: str) -> IntegrityError:
        return IntegrityError(version_id, MANIFEST, detail)

    try:
        body = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as err:
        raise corrupt(f"not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise corrupt("not a JSON object")
    schema = body.get("schema_version")
    if isinstance(schema, int) and schema > SCHEMA_VERSION:
        raise StoreError(
            f"version {version_id} has manifest schema {schema}, newer than this janus "
            f"understands ({SCHEMA_VERSION}); upgrade janus-serve"
        )
    try:
        manifest = Manifest.model_validate(body)
    except ValidationError as err:
        raise corrupt(f"fields do not validate ({err.error_count()} errors: {err})") from None
    if encode_manifest(manifest) != raw:
        raise corrupt("bytes differ from the canonical form written by the store")
    expected = hashlib.sha256(_canonical(_without_digest(body))).hexdigest()
    if expected != manifest.digest:
        raise corrupt(f"self-digest mismatch (stored {manifest.digest}, computed {expected})")
    if manifest.id != version_id:
        raise corrupt(f"manifest names id {manifest.id!r}, but it is stored as {version_id!r}")
    return manifest
