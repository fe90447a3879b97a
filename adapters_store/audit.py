"""The serving audit log (`log/serving.jsonl`): one JSON line per change of the serving pointer,
and one per version the promotion gate rejected (`reject`: `to` is the rejected version, `from`
the version that kept serving; the pointer does not move)."""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from adapters_store._backend import Backend
from adapters_store.errors import IntegrityError
from adapters_store.manifest import Text, VersionId, plain_text

LOG = "log/serving.jsonl"
SERVING = "refs/serving"

Reason = Annotated[str, Field(max_length=2000), AfterValidator(plain_text)]
Line = TypeVar("Line", bound=BaseModel)


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


def decode_lines(raw: bytes, model: type[Line], path: str) -> list[Line]:
    """Parses a JSON-lines log of `model` entries. A torn last line (a crash mid-append, no final
    newline) is ignored: an incomplete write, never acknowledged to its caller."""
    entries = []
    for number, line in enumerate(raw.split(b"\n")[:-1], start=1):
        try:
            entries.append(model.model_validate_json(line))
        except ValidationError as err:
            raise IntegrityError(None, path, f"line {number} does not parse ({err})") from None
    return entries


def decode_log(raw: bytes) -> list[AuditEntry]:
    """Parses the serving log."""
    return decode_lines(raw, AuditEntry, LOG)


def append_line(backend: Backend, path: str, line: bytes, log: bytes | None = None) -> None:
    """Appends one line to a log whose bytes are `log` (read here if not given), first dropping a
    torn last line left by a crash mid-append; the caller holds the log's lock."""
    if log is None:
        try:
            log = backend.read(path)
        except FileNotFoundError:
            log = b""
    if log and not log.endswith(b"\n"):
        backend.write(path, log[: log.rfind(b"\n") + 1])
    backend.append(path, line)
