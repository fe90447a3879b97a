"""`janus verify`: every version's manifest and files, the serving pointer and the audit log.

Built on the store's public reads only (this module depends on `store`, never the reverse).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters_store import paths
from adapters_store.audit import LOG, SERVING
from adapters_store.errors import IntegrityError
from adapters_store.store import VersionStore


@dataclass(frozen=True)
class Problem:
    """One finding: which version and file (None for the store itself), and what is wrong."""

    version: str | None
    file: str | None
    message: str

    def __str__(self) -> str:
        where = "/".join(part for part in (self.version, self.file) if part) or "store"
        return f"{where}: {self.message}"


@dataclass
class VerifyReport:
    """What was checked and found; `ok` when there are no problems (warnings allowed)."""

    checked: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(store: VersionStore) -> VerifyReport:
    """Reads every file of every version and checks it against its manifest."""
    report = VerifyReport()
    ids = store.version_ids()
    for version_id in ids:
        report.checked.append(version_id)
        report.problems += _verify_version(store, version_id, set(ids))
    try:
        current = store.serving()
    except IntegrityError as err:
        report.problems.append(Problem(None, err.file, err.detail))
        current = None
    if current is not None and current not in ids:
        report.problems.append(Problem(None, SERVING, f"names missing version {current}"))
    try:
        history = store.history()
    except IntegrityError as err:
        report.problems.append(Problem(None, err.file, err.detail))
        history = []
    history = [e for e in history if e.moved]  # the gate's rejections move nothing
    if history and current is not None and history[-1].to != current:
        report.warnings.append(
            Problem(
                None,
                LOG,
                f"the last entry activates {history[-1].to} but {current} serves "
                "(an activation was interrupted); repeat it with `janus activate`",
            )
        )
    return report


def _verify_version(store: VersionStore, version_id: str, ids: set[str]) -> list[Problem]:
    try:
        manifest = store.get(version_id)
    except IntegrityError as err:
        return [Problem(version_id, err.file, err.detail)]
    problems = []
    for name in manifest.files:
        try:
            store.read_bytes(version_id, name)
        except IntegrityError as err:
            problems.append(Problem(version_id, name, err.detail))
    present = set(store.stored_files(version_id))
    for name in sorted(present - set(manifest.files) - {paths.MANIFEST}):
        problems.append(Problem(version_id, name, "file not in the manifest"))
    if manifest.parent is not None and manifest.parent not in ids:
        problems.append(Problem(version_id, None, f"parent {manifest.parent} does not exist"))
    return problems
