"""The serving audit log (`log/serving.jsonl`): one JSON line per change of the serving pointer,
and one per version the promotion gate rejected (`reject`: `to` is the rejected version, `from`
the version that kept serving; the pointer does not move)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from adapters_store.errors import IntegrityError
from adapters_store.manifest import Text, VersionId, plain_text

LOG = "log/serving.jsonl"
SERVING = "refs/serving"

Reason = Annotated[str, Field(max_length=2000), AfterValidator(plain_text)]


class AuditEntry(BaseModel):
    """One change of the serving version: who moved it, when, why, from which, to which."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    time: AwareDatetime
    action: Literal["activate", "rollback", "reject"]
    actor: Text
    reason: Reason = ""
    from_: VersionId | None = Field(validation_alias="from", serialization_alias="from")
    to: VersionId
    forced: bool = Field(False, description="served despite the gate's rejection or a quarantine")

    @property
    def moved(self) -> bool:
        """Whether this entry moved the pointer (a `reject` only records a decision)."""
        return self.action != "reject"

    def to_line(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode() + b"\n"


def decode_log(raw: bytes) -> list[AuditEntry]:
    """Parses the log. A torn last line (a crash mid-append, no final newline) is ignored."""
    lines = raw.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    entries = []
    for number, line in enumerate(complete, start=1):
        try:
            entries.append(AuditEntry.model_validate_json(line))
        except ValidationError as err:
            raise IntegrityError(None, LOG, f"line {number} does not parse ({err})") from None
    del tail  # incomplete write, never acknowledged to its caller
    return entries


def complete_prefix(raw: bytes) -> bytes:
    """The log up to its last newline (drops a torn tail before the next append)."""
    cut = raw.rfind(b"\n")
    return raw[: cut + 1]
