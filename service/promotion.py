"""`janus eval | alias | shadow`: the commands of safe promotion (DESIGN.md §5, §6).

    janus eval add PATH            attach a golden evaluation set (class folders, or an archive)
    janus eval list                every evaluation set: learn jobs' held-out samples, golden sets
    janus alias set NAME ID        point an alias at a version;  alias rm NAME;  alias list
    janus shadow ID --fraction F   mirror that share of classify traffic to ID, counting agreement
    janus shadow --off             stop;  `janus shadow` alone: what shadows, and its counts

Each works on the local store (`--store`, and Redis for the shadow counts) or, with `--url`,
through a running service's admin API, like the store commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from adapters_store import AuditEntry, open_store
from adapters_store.cli import (
    add_command,
    json_option,
    print_fields,
    print_json,
    print_table,
    shadow_fields,
    wants_json,
)
from adapters_store.settings import default_store_uri
from service.client import ServiceError
from service.remote import _archive, _call


def _store(args: argparse.Namespace) -> Any:
    return open_store(getattr(args, "store", None) or default_store_uri(), create=False)


def _remote(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "url", None))


def _local_redis_url() -> str | None:
    """The Redis of the job settings: `JANUS_REDIS_URL`, else the embedded one running for the
    data directory (None: neither)."""
    from learner.jobs.redis_embedded import current_url
    from learner.jobs.settings import JobSettings

    settings = JobSettings.from_env()
    return current_url(settings.redis_url, settings.data_dir)


def local_shadow_counts(version: str) -> dict[str, Any] | None:
    """A version's shadow counts from the Redis of the job settings (None without one)."""
    from service.shadow import counts_at

    return counts_at(_local_redis_url(), version)


def local_announce_move(entry: AuditEntry) -> None:
    """`janus activate | rollback` without --url: tells the serving workers the pointer moved
    (a change made to the store directly, not through a service)."""
    from service.swap import announce_move

    announce_move(_local_redis_url(), entry)


# -- eval ------------------------------------------------------------------------------------


def _eval_add(args: argparse.Namespace) -> int:
    if _remote(args):
        name, data = _archive(Path(args.path))
        info = _call(args, "POST", "/admin/evalsets", files={"dataset": (name, data)})
    else:
        from learner.jobs.evaluation import golden_set
        from learner.jobs.settings import JobSettings
        from service.api import MAX_GOLDEN_IMAGES

        limit = JobSettings.from_env().max_dataset_bytes
        found = golden_set(
            _store(args), Path(args.path), max_bytes=limit, max_images=MAX_GOLDEN_IMAGES
        )
        info = found.model_dump(mode="json")
    if wants_json(args):
        print_json(info)
    else:
        classes = ", ".join(f"{k} ({v})" for k, v in info["classes"].items())
        print(f"evaluation set {info['digest'][:12]}… ({info['kind']}): {classes}")
    return 0


def _eval_list(args: argparse.Namespace) -> int:
    if _remote(args):
        sets = _call(args, "GET", "/admin/evalsets")
    else:
        sets = [i.model_dump(mode="json") for i in _store(args).evalsets.sets()]
    if wants_json(args):
        print_json(sets)
    elif not sets:
        print("no evaluation sets yet: learn jobs keep some of each new class's held-out images")
    else:
        rows = [["DIGEST", "KIND", "IMAGES", "CLASSES", "SOURCE"]]
        for s in sets:
            count = str(sum(s["classes"].values()))
            rows.append([s["digest"][:12], s["kind"], count, ", ".join(s["classes"]), s["source"]])
        print_table(rows)
    return 0


# -- alias -----------------------------------------------------------------------------------


def _alias_set(args: argparse.Namespace) -> int:
    body = {"version": args.id, "actor": args.actor, "reason": args.reason}
    if _remote(args):
        entry = _call(args, "PUT", f"/admin/aliases/{args.name}", json=body)
    else:
        store = _store(args)
        found = store.set_alias(args.name, args.id, actor=args.actor, reason=args.reason)
        entry = found.model_dump(mode="json", by_alias=True)
    print_json(entry) if wants_json(args) else print(
        f"{entry['alias']} → {entry['to']} (was {entry['from'] or 'unset'})"
    )
    return 0


def _alias_rm(args: argparse.Namespace) -> int:
    if _remote(args):
        body = {"actor": args.actor, "reason": args.reason}
        entry = _call(args, "DELETE", f"/admin/aliases/{args.name}", json=body)
    else:
        found = _store(args).set_alias(args.name, None, actor=args.actor, reason=args.reason)
        entry = found.model_dump(mode="json", by_alias=True)
    print_json(entry) if wants_json(args) else print(f"removed {entry['alias']}")
    return 0


def _alias_list(args: argparse.Namespace) -> int:
    if _remote(args):
        names = _call(args, "GET", "/admin/aliases")
    else:
        store = _store(args)
        current = store.serving()
        names = {**store.aliases.all(), **({"serving": current} if current else {})}
    if wants_json(args):
        print_json(names)
    else:
        print_table([["ALIAS", "VERSION"], *([k, v] for k, v in sorted(names.items()))])
    return 0


# -- shadow ----------------------------------------------------------------------------------


def _shadow(args: argparse.Namespace) -> int:
    if args.id and args.off:
        raise ServiceError("give a version to shadow, or --off, not both")
    if _remote(args):
        if args.off:
            answer = _call(args, "DELETE", "/admin/shadow")
        elif args.id:
            body = {"version": args.id, "fraction": args.fraction, "reason": args.reason}
            answer = _call(args, "PUT", "/admin/shadow", json={**body, "actor": args.actor})
        else:
            answer = _call(args, "GET", "/admin/shadow")
    else:
        store = _store(args)
        if args.off or args.id:
            found = store.set_shadow(
                None if args.off else args.id, args.fraction, actor=args.actor, reason=args.reason
            )
            from service.swap import announce_change

            shadowed = found and found.version
            announce_change(_local_redis_url(), {"event": "shadow-changed", "version": shadowed})
            answer = {"shadow": found.model_dump(mode="json") if found else None}
        else:
            found = store.shadow()
            answer = {
                "shadow": found.model_dump(mode="json") if found else None,
                "counts": local_shadow_counts(found.version) if found else None,
            }
    if wants_json(args):
        print_json(answer)
        return 0
    shadow = answer["shadow"]
    if shadow is None:
        print("nothing shadows the serving version")
        return 0
    print(
        f"{shadow['version']} shadows the serving version on {100 * shadow['fraction']:g} % of "
        f"classify requests, since {shadow['since']} ({shadow['actor']})"
    )
    if "counts" in answer:
        print_fields(shadow_fields(answer["counts"]))
    return 0


# -- registration ----------------------------------------------------------------------------


def _where(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=argparse.SUPPRESS,
        metavar="URI",
        help="the store (default: $JANUS_STORE)",
    )
    parser.add_argument(
        "--url", default=argparse.SUPPRESS, help="go through a running service's admin API"
    )
    parser.add_argument(
        "--token", default=argparse.SUPPRESS, help="admin token (default: $JANUS_ADMIN_TOKEN)"
    )
    json_option(parser)


def _who(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--actor", help="who makes the change (default: user@host)")
    parser.add_argument("--reason", default="", help="why, recorded with the change")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `eval`, `alias` and `shadow` to the `janus` parser."""
    evals = add_command(subparsers, "eval", "evaluation sets: images kept to evaluate candidates")
    nested = evals.add_subparsers(dest="eval_command", required=True, metavar="add|list")
    add = add_command(nested, "add", "attach a golden set (a folder of class folders, or archive)")
    add.add_argument("path", help="<folder>/<class>/<image>, or a zip or tar of it")
    _where(add)
    add.set_defaults(func=_eval_add)
    listed = add_command(nested, "list", "every evaluation set")
    _where(listed)
    listed.set_defaults(func=_eval_list)

    alias = add_command(subparsers, "alias", "names for versions (`serving` is the pointer)")
    nested = alias.add_subparsers(dest="alias_command", required=True, metavar="set|rm|list")
    put = add_command(nested, "set", "point an alias at a version")
    put.add_argument("name", help="e.g. champion")
    put.add_argument("id", help="version id, e.g. v0003")
    _who(put)
    _where(put)
    put.set_defaults(func=_alias_set)
    rm = add_command(nested, "rm", "remove an alias")
    rm.add_argument("name", help="the alias to remove")
    _who(rm)
    _where(rm)
    rm.set_defaults(func=_alias_rm)
    names = add_command(nested, "list", "every alias and its version")
    _where(names)
    names.set_defaults(func=_alias_list)

    shadow = add_command(
        subparsers,
        "shadow",
        "mirror a share of classify traffic to a version, counting agreement; alone: status",
    )
    shadow.add_argument("id", nargs="?", help="the version to shadow the serving one")
    shadow.add_argument(
        "--fraction", type=float, default=0.1, help="share of classify requests mirrored (0–1]"
    )
    shadow.add_argument("--off", action="store_true", help="stop shadowing")
    _who(shadow)
    _where(shadow)
    shadow.set_defaults(func=_shadow)
