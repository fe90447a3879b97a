"""`janus versions | activate | rollback | history | verify | clean-staging`: the store's commands.

`service/cli.py` builds the `janus` parser and calls `register(subparsers)`; `main(argv)` builds a
parser with only these commands (used by tests and `python -m adapters_store.cli`).

Each kind of answer is printed by one function that takes the store's models (`print_versions`,
`print_version`, `print_entry`, `print_history`): the local commands and their `--url` twins in
`service.remote`, which parse the service's JSON back into the same models, share them. This is
the lowest layer with a command line, so the helpers every `janus` command uses live here too:
`Parser` (help that shows defaults), `print_table`, `print_fields`, `print_json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from adapters_store.audit import AuditEntry
from adapters_store.errors import StoreError
from adapters_store.manifest import Evaluation, Manifest
from adapters_store.settings import default_store_uri
from adapters_store.store import LoadCheck, VersionStore, open_store
from adapters_store.verify import verify_store

Handler = Callable[[argparse.Namespace], int]

Listed = tuple[str, Manifest | str]
"""A version id with its manifest, or why the manifest does not load."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions; ends an option's help with its default, if any.

    No default (None), an unset flag (False) and empty values are left out: their help says what
    happens without them.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS:
            return action.help
        if isinstance(default, str | list | tuple) and not default:
            return action.help
        return super()._get_help_string(action)

    def _split_lines(self, text: str, width: int) -> list[str]:
        # method names, options and lists of them: never break a line inside one
        return textwrap.wrap(
            " ".join(text.split()), width, break_on_hyphens=False, break_long_words=False
        )


class Parser(argparse.ArgumentParser):
    """The parser of `janus` and of each of its commands (`add_subparsers` makes `Parser`s)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def add_command(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    text: str,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """A subcommand listed with `text`, which also opens its own `--help`."""
    kwargs.setdefault("description", text[:1].upper() + text[1:] + ".")
    parser: argparse.ArgumentParser = subparsers.add_parser(name, help=text, **kwargs)
    return parser


def json_option(parser: argparse.ArgumentParser, text: str = "print JSON") -> None:
    """`--json`; SUPPRESS: a nested parser's default must not overwrite its parent's value."""
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=text)


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Rows of cells in aligned columns; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def print_fields(fields: Sequence[tuple[str, str]]) -> None:
    """One `label  value` line per field, the values aligned."""
    width = max(len(label) for label, _ in fields)
    for label, value in fields:
        print(f"{label:<{width}}  {value}")


def shorten(text: str, limit: int = 40) -> str:
    """The first line of `text`, cut to `limit` characters."""
    line = text.strip().split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def print_versions(
    listed: Sequence[Listed],
    serving: str | None,
    *,
    as_json: bool,
    where: str,
    quarantined: Mapping[str, str] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> int:
    """`janus versions`: a table, or JSON (each manifest plus `serving`, `quarantined` (the
    reason or null), `rejected` (the gate's reason or null) and `aliases`); 1 if one does not
    load."""
    quarantined, aliases = quarantined or {}, aliases or {}
    named = {vid: sorted(a for a, v in aliases.items() if v == vid) for vid, _ in listed}
    if as_json:
        print_json(
            [
                {
                    **m.model_dump(mode="json"),
                    "serving": vid == serving,
                    "quarantined": quarantined.get(vid),
                    "rejected": m.rejected,
                    "aliases": named[vid],
                }
                if isinstance(m, Manifest)
                else {"id": vid, "error": m, "serving": vid == serving}
                for vid, m in listed
            ]
        )
    elif not listed:
        print(f"no versions in {where} yet; learn one with `janus learn PATH`")
    else:
        rows = [["ID", "PARENT", "CREATED", "CLASSES ADDED", "ACCURACY", "OLD Δ", "STATUS"]]
        for vid, m in listed:
            if not isinstance(m, Manifest):
                rows.append([vid, "?", "?", "CORRUPT: run `janus verify`", "?", "?", "?"])
                continue
            marks = [
                word
                for word, on in (
                    ("serving", vid == serving),
                    ("rejected", m.rejected is not None),
                    ("quarantined", vid in quarantined),
                )
                if on
            ] + [f"@{a}" for a in named[vid]]
            accuracy = f"{m.accuracy:.4g}" if m.accuracy is not None else "-"
            drop = m.evaluation.old_drop if m.evaluation else None
            change = f"{0.0 - drop:+.1f}" if drop is not None else "-"  # 0.0 - 0.0 is +0.0
            created = m.created_at.strftime("%Y-%m-%d %H:%M:%S")
            added = shorten(", ".join(m.new_classes) or "-")
            rows.append([vid, m.parent or "-", created, added, accuracy, change, " ".join(marks)])
        print_table(rows)
    return 0 if all(isinstance(m, Manifest) for _, m in listed) else 1


def _evaluation_fields(evaluation: Evaluation) -> list[tuple[str, str]]:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} %"

    fields = [
        (
            "evaluated",
            f"against {evaluation.against or '(nothing served)'} on "
            f"{len(evaluation.sets)} evaluation set(s)",
        ),
        ("new classes", pct(evaluation.new_accuracy)),
        (
            "old classes",
            f"{pct(evaluation.old_accuracy)}; among the old classes only "
            f"{pct(evaluation.old_accuracy_among_old)} (serving version: "
            f"{pct(evaluation.old_accuracy_serving)})",
        ),
    ]
    for name, score in evaluation.per_class.items():
        change = score.change
        delta = "" if change is None else f"  ({change:+.1f} vs serving)"
        fields.append((f"  {name}", f"{pct(score.accuracy)} of {score.images}{delta}"))
    gate = evaluation.gate
    if gate is None:
        fields.append(("gate", "not applied (activation auto)"))
    else:
        verdict = "passed" if gate.passed else "REJECTED: " + "; ".join(gate.reasons)
        forgetting = (
            "" if gate.max_forgetting is None else f", forgetting ≤ {gate.max_forgetting:g}"
        )
        fields.append(
            (
                "gate",
                f"{verdict} (new ≥ {gate.min_new_accuracy:g} %, old drop ≤ "
                f"{gate.max_old_drop:g}{forgetting} points)",
            )
        )
    return fields


def print_version(
    manifest: Manifest,
    lineage: Sequence[str],
    serving: bool,
    *,
    as_json: bool,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """`janus versions show ID`: the manifest, lineage and evaluation as fields, or JSON;
    `extra` (aliases, quarantined, shadow counts) is added to either."""
    extra = dict(extra or {})
    if as_json:
        print_json(
            {
                "manifest": manifest.model_dump(mode="json"),
                "lineage": list(lineage),
                "serving": serving,
                "rejected": manifest.rejected,
                **extra,
            }
        )
        return
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
    if extra.get("aliases"):
        fields.append(("aliases", ", ".join(extra["aliases"])))
    if extra.get("quarantined"):
        fields.append(("quarantined", str(extra["quarantined"])))
    if manifest.evaluation is not None:
        fields += _evaluation_fields(manifest.evaluation)
    if "shadow" in extra:
        fields += shadow_fields(extra["shadow"])
    fields += [
        ("file", f"{name}  {entry.size} B  sha256 {entry.sha256}")
        for name, entry in manifest.files.items()
    ]
    print_fields(fields)


def shadow_fields(counts: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """How a version agreed with each serving version while it shadowed (`read_counts`)."""
    if counts is None:
        return [("shadowed", "unknown (no Redis)")]
    if not counts:
        return [("shadowed", "never")]
    fields = []
    for serving, c in sorted(counts.items()):
        share = f"{100 * c['agreement']:.1f} %" if c["agreement"] is not None else "-"
        fields.append(("shadowed", f"against {serving}: {c['images']} images, agreement {share}"))
        for name, pc in c["per_class"].items():
            fields.append((f"  {name}", f"agreed on {pc['agreed']} of {pc['images']}"))
    return fields


def print_entry(entry: AuditEntry, *, as_json: bool) -> None:
    """`janus activate | rollback`: the serving change made."""
    if as_json:
        print_json(entry.model_dump(mode="json", by_alias=True))
    else:
        print(f"serving {entry.to} (was {entry.from_ or 'none'}); recorded for {entry.actor}")


def print_history(entries: Sequence[AuditEntry], *, as_json: bool) -> None:
    """`janus history`: the audit log, oldest first."""
    if as_json:
        print_json([entry.model_dump(mode="json", by_alias=True) for entry in entries])
    elif not entries:
        print("no serving changes yet; serve a version with `janus activate ID`")
    else:
        rows = [["TIME", "ACTION", "FROM", "TO", "ACTOR", "REASON"]]
        for e in entries:
            time = e.time.strftime("%Y-%m-%d %H:%M:%S")
            action = f"{e.action} (forced)" if e.forced else e.action
            rows.append([time, action, e.from_ or "-", e.to, e.actor, e.reason])
        print_table(rows)


def _store_option(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a nested parser's default must not overwrite a value given to its parent
    parser.add_argument(
        "--store",
        default=argparse.SUPPRESS,
        metavar="URI",
        help="the store: a path, file://… or s3://bucket/prefix (default: $JANUS_STORE, "
        "else $JANUS_DATA_DIR/store)",
    )


def _who(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--actor", help="who makes the change, in the audit log (default: user@host)"
    )
    parser.add_argument("--reason", default="", help="why, recorded in the audit log")


ShadowCounts = Callable[[str], "dict[str, Any] | None"]
"""version → its shadow counts by serving version (`service.shadow.read_counts`); None: unknown."""
Announce = Callable[[AuditEntry], None]
"""Tells the serving workers that the pointer moved (`entry`), so they need not wait for a poll."""


def register(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    check_load: LoadCheck | None = None,
    shadow_counts: ShadowCounts | None = None,
    announce: Announce | None = None,
) -> None:
    """Adds the store's subcommands to the `janus` parser; `check_load` test-loads a version
    before `activate` moves the pointer, `shadow_counts` reads how a version agreed while it
    shadowed, `announce` tells the serving workers that `activate` or `rollback` moved it (the
    store knows no model code and no Redis, the caller does)."""
    versions = add_command(subparsers, "versions", "list versions (`versions show ID`: one)")
    _store_option(versions)
    json_option(versions)
    versions.set_defaults(func=_guard(_versions))
    nested = versions.add_subparsers(title="commands", metavar="show")
    show = add_command(nested, "show", "one version's manifest and lineage")
    show.add_argument("id", help="version id, e.g. v0003")
    _store_option(show)
    json_option(show)
    show.set_defaults(func=_guard(_show), shadow_counts=shadow_counts)

    activate = add_command(subparsers, "activate", "serve a version (moves a pointer)")
    activate.add_argument("id", help="version id, e.g. v0003")
    activate.add_argument(
        "--force",
        action="store_true",
        help="serve a version the promotion gate rejected, or a quarantined one (and clear its "
        "quarantine); needs --reason",
    )
    activate.add_argument(
        "--min-shadowed",
        type=int,
        default=0,
        metavar="N",
        help="refuse unless the version shadowed at least N images of the serving one",
    )
    activate.add_argument(
        "--min-agreement",
        type=float,
        default=0.0,
        metavar="F",
        help="refuse unless it agreed with the serving version on at least this share (0–1)",
    )
    _who(activate)
    _store_option(activate)
    json_option(activate, "print the audit entry as JSON")
    activate.set_defaults(
        func=_guard(_activate),
        check_load=check_load,
        shadow_counts=shadow_counts,
        announce=announce,
    )

    rollback = add_command(
        subparsers, "rollback", "serve the previously serving version, or --to ID"
    )
    rollback.add_argument("--to", metavar="ID", help="version to serve instead of the previous one")
    _who(rollback)
    _store_option(rollback)
    json_option(rollback, "print the audit entry as JSON")
    rollback.set_defaults(func=_guard(_rollback), announce=announce)

    history = add_command(subparsers, "history", "audit log of serving changes")
    _store_option(history)
    json_option(history)
    history.set_defaults(func=_guard(_history))

    verify = add_command(subparsers, "verify", "check every version's files and the pointer")
    _store_option(verify)
    json_option(verify)
    verify.set_defaults(func=_guard(_verify))

    clean = add_command(subparsers, "clean-staging", "remove abandoned partial publishes")
    clean.add_argument(
        "--older-than",
        type=float,
        metavar="SECONDS",
        help="also treat publishes from other hosts older than this as abandoned "
        "(default: $JANUS_STORE_STALE_AFTER_S)",
    )
    _store_option(clean)
    json_option(clean, "print the removed paths as JSON")
    clean.set_defaults(func=_guard(_clean))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one store command, e.g. `main(["versions", "--json"])`; returns the exit code."""
    parser = Parser(prog="janus")
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


def _versions(args: argparse.Namespace, store: VersionStore) -> int:
    listed: list[Listed] = []
    for version_id in store.version_ids():
        try:
            listed.append((version_id, store.get(version_id)))
        except StoreError as err:
            listed.append((version_id, str(err)))
    return print_versions(
        listed,
        store.serving(),
        as_json=wants_json(args),
        where=store.uri,
        quarantined=store.quarantined(),
        aliases=store.aliases.all(),
    )


def _show(args: argparse.Namespace, store: VersionStore) -> int:
    manifest = store.get(args.id)
    lineage = [m.id for m in store.lineage(args.id)]
    extra: dict[str, Any] = {
        "quarantined": store.quarantined().get(manifest.id),
        "aliases": sorted(a for a, v in store.aliases.all().items() if v == manifest.id),
    }
    if args.shadow_counts is not None:
        extra["shadow"] = args.shadow_counts(manifest.id)
    serving = store.serving() == manifest.id
    print_version(manifest, lineage, serving, as_json=wants_json(args), extra=extra)
    return 0


def check_shadowed(
    counts: Mapping[str, Any] | None, version: str, serving: str | None, images: int, share: float
) -> str | None:
    """Why `version` has not shadowed `serving` enough to be promoted, or None."""
    if counts is None:
        return "shadow counts are unknown (no Redis: set JANUS_REDIS_URL or use `janus up`)"
    seen = counts.get(serving or "", {"images": 0, "agreement": None})
    agreement = seen["agreement"] or 0.0
    if seen["images"] >= images and agreement >= share:
        return None
    return (
        f"{version} shadowed {seen['images']} images of {serving} with agreement "
        f"{agreement:.3f}; promotion needs {images} and {share:.3f}: shadow it longer "
        f"(`janus shadow {version}`) or lower the requirement"
    )


def _activate(args: argparse.Namespace, store: VersionStore) -> int:
    if args.min_shadowed or args.min_agreement:
        counts = args.shadow_counts(args.id) if args.shadow_counts else None
        problem = check_shadowed(
            counts, args.id, store.serving(), args.min_shadowed, args.min_agreement
        )
        if problem is not None:
            raise StoreError(problem)
    check = None if store.uri.startswith("memory://") else args.check_load  # a child can't see it
    entry = store.activate(
        args.id, actor=args.actor, reason=args.reason, force=args.force, test_load=check
    )
    _moved(args, entry)
    return 0


def _rollback(args: argparse.Namespace, store: VersionStore) -> int:
    _moved(args, store.rollback(args.to, actor=args.actor, reason=args.reason))
    return 0


def _moved(args: argparse.Namespace, entry: AuditEntry) -> None:
    if args.announce is not None:
        args.announce(entry)
    print_entry(entry, as_json=wants_json(args))


def _history(args: argparse.Namespace, store: VersionStore) -> int:
    print_history(store.history(), as_json=wants_json(args))
    return 0


def _verify(args: argparse.Namespace, store: VersionStore) -> int:
    report = verify_store(store)
    if wants_json(args):
        print_json(
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
    removed = store.clean_staging(args.older_than)
    if wants_json(args):
        print_json(removed)
        return 0
    for path in removed:
        print(f"removed {path}")
    if not removed:
        print(f"no abandoned publishes in {store.uri}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
