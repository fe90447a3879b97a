"""`janus versions | activate | rollback | history | verify | clean-staging`: the store's commands.

`service/cli.py` builds the `janus` parser and calls `register(subparsers)`; `main(argv)` builds a
parser with only these commands (used by tests and `python -m adapters_store.cli`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from adapters_store.audit import AuditEntry
from adapters_store.errors import StoreError
from adapters_store.manifest import Manifest
from adapters_store.settings import default_store_uri
from adapters_store.store import VersionStore, open_store
from adapters_store.verify import verify_store

Handler = Callable[[argparse.Namespace], int]


def _common(parser: argparse.ArgumentParser, json_help: str | None = None) -> None:
    # SUPPRESS: a nested parser's default must not overwrite a value given to its parent
    parser.add_argument(
        "--store",
        default=argparse.SUPPRESS,
        metavar="URI",
        help="store path or URI (file://, s3://bucket/prefix); default $JANUS_STORE, "
        "else $JANUS_DATA_DIR/store",
    )
    if json_help:
        parser.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help=json_help
        )


def _who(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--actor", help="who makes the change (default user@host)")
    parser.add_argument("--reason", default="", help="why, recorded in the audit log")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds the store's subcommands to the `janus` parser."""
    versions = subparsers.add_parser("versions", help="list versions (`versions show ID`: one)")
    _common(versions, "print JSON")
    versions.set_defaults(func=_guard(_versions))
    nested = versions.add_subparsers(title="commands", metavar="show")
    show = nested.add_parser("show", help="one version's manifest and lineage")
    show.add_argument("id", help="version id, e.g. v0003")
    _common(show, "print JSON")
    show.set_defaults(func=_guard(_show))

    activate = subparsers.add_parser("activate", help="serve a version (moves a pointer)")
    activate.add_argument("id", help="version id, e.g. v0003")
    _who(activate)
    _common(activate, "print the audit entry as JSON")
    activate.set_defaults(func=_guard(_activate))

    rollback = subparsers.add_parser(
        "rollback", help="serve the previously serving version, or --to ID"
    )
    rollback.add_argument("--to", metavar="ID", help="version to serve instead")
    _who(rollback)
    _common(rollback, "print the audit entry as JSON")
    rollback.set_defaults(func=_guard(_rollback))

    history = subparsers.add_parser("history", help="audit log of serving changes")
    _common(history, "print JSON")
    history.set_defaults(func=_guard(_history))

    verify = subparsers.add_parser("verify", help="check every version's files and the pointer")
    _common(verify, "print JSON")
    verify.set_defaults(func=_guard(_verify))

    clean = subparsers.add_parser("clean-staging", help="remove abandoned partial publishes")
    clean.add_argument(
        "--older-than",
        type=float,
        metavar="SECONDS",
        help="also treat publishes from other hosts older than this as abandoned",
    )
    _common(clean)
    clean.set_defaults(func=_guard(_clean))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one store command, e.g. `main(["versions", "--json"])`; returns the exit code."""
    parser = argparse.ArgumentParser(prog="janus")
    register(parser.add_subparsers(required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def _guard(handler: Callable[[argparse.Namespace, VersionStore], int]) -> Handler:
    """Opens the store, runs the command, and turns store errors into a message and exit 1."""

    def run(args: argparse.Namespace) -> int:
        uri = getattr(args, "store", None) or default_store_uri()
        try:
            return handler(args, open_store(uri, create=False))
        except StoreError as err:
            print(f"janus: error: {err}", file=sys.stderr)
            return 1

    return run


def _json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _short(names: Sequence[str], limit: int = 40) -> str:
    text = ", ".join(names) or "-"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _versions(args: argparse.Namespace, store: VersionStore) -> int:
    serving = store.serving()
    listed: list[tuple[str, Manifest | StoreError]] = []
    for version_id in store.version_ids():
        try:
            listed.append((version_id, store.get(version_id)))
        except StoreError as err:
            listed.append((version_id, err))
    if _json(args):
        _print_json(
            [
                {**m.model_dump(mode="json"), "serving": vid == serving}
                if isinstance(m, Manifest)
                else {"id": vid, "error": str(m), "serving": vid == serving}
                for vid, m in listed
            ]
        )
    elif not listed:
        print(f"no versions in {store.uri} yet; train one with the learner")
    else:
        rows = [["ID", "PARENT", "CREATED", "CLASSES ADDED", "ACCURACY", "SERVING"]]
        for vid, m in listed:
            mark = "*" if vid == serving else ""
            if isinstance(m, StoreError):
                rows.append([vid, "?", "?", "CORRUPT: run `janus verify`", "?", mark])
                continue
            accuracy = f"{m.accuracy:.4f}" if m.accuracy is not None else "-"
            created = m.created_at.strftime("%Y-%m-%d %H:%M:%S")
            rows.append([vid, m.parent or "-", created, _short(m.new_classes), accuracy, mark])
        _table(rows)
    return 1 if any(isinstance(m, StoreError) for _, m in listed) else 0


def _show(args: argparse.Namespace, store: VersionStore) -> int:
    manifest = store.get(args.id)
    lineage = [m.id for m in store.lineage(args.id)]
    serving = store.serving() == manifest.id
    if _json(args):
        _print_json(
            {"manifest": manifest.model_dump(mode="json"), "lineage": lineage, "serving": serving}
        )
        return 0
    new = f" (new: {', '.join(manifest.new_classes)})" if manifest.new_classes else ""
    fields = [
        ("version", manifest.id + ("  [serving]" if serving else "")),
        ("lineage", " <- ".join(lineage)),
        ("created", manifest.created_at.isoformat()),
        ("method", f"{manifest.method} {json.dumps(manifest.hyperparameters, sort_keys=True)}"),
        ("backbone", f"{manifest.backbone.name} (sha256 {manifest.backbone.weights_sha256})"),
        ("task", str(manifest.task_index)),
        ("classes", ", ".join(manifest.classes) + new),
        ("data", manifest.data_digest),
        ("metrics", ", ".join(f"{k}={v:g}" for k, v in manifest.metrics.items()) or "-"),
        ("job", f"{manifest.job_id or '-'} (idempotency key {manifest.idempotency_key or '-'})"),
    ]
    fields += [
        ("file", f"{name}  {entry.size} B  sha256 {entry.sha256}")
        for name, entry in manifest.files.items()
    ]
    for label, value in fields:
        print(f"{label:<9} {value}")
    return 0


def _print_entry(args: argparse.Namespace, entry: AuditEntry) -> None:
    if _json(args):
        print(entry.model_dump_json(by_alias=True))
    else:
        print(f"serving {entry.to} (was {entry.from_ or 'none'}); recorded for {entry.actor}")


def _activate(args: argparse.Namespace, store: VersionStore) -> int:
    _print_entry(args, store.activate(args.id, actor=args.actor, reason=args.reason))
    return 0


def _rollback(args: argparse.Namespace, store: VersionStore) -> int:
    _print_entry(args, store.rollback(args.to, actor=args.actor, reason=args.reason))
    return 0


def _history(args: argparse.Namespace, store: VersionStore) -> int:
    entries = store.history()
    if _json(args):
        _print_json([entry.model_dump(mode="json", by_alias=True) for entry in entries])
    elif not entries:
        print("no serving changes yet; serve a version with `janus activate ID`")
    else:
        rows = [["TIME", "ACTION", "FROM", "TO", "ACTOR", "REASON"]]
        for e in entries:
            time = e.time.strftime("%Y-%m-%d %H:%M:%S")
            rows.append([time, e.action, e.from_ or "-", e.to, e.actor, e.reason])
        _table(rows)
    return 0


def _verify(args: argparse.Namespace, store: VersionStore) -> int:
    report = verify_store(store)
    if _json(args):
        _print_json(
            {
                "ok": report.ok,
                "checked": report.checked,
                "problems": [vars(p) for p in report.problems],
                "warnings": [vars(p) for p in report.warnings],
            }
        )
    else:
        for problem in report.problems:
            print(f"PROBLEM  {problem}")
        for warning in report.warnings:
            print(f"warning  {warning}")
        verdict = "ok" if report.ok else f"{len(report.problems)} problem(s)"
        print(f"{len(report.checked)} version(s) checked in {store.uri}: {verdict}")
        if not report.ok:
            print("serve a good version with `janus rollback --to ID`; republish damaged ones")
    return 0 if report.ok else 1


def _clean(args: argparse.Namespace, store: VersionStore) -> int:
    for path in store.clean_staging(args.older_than):
        print(f"removed {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
