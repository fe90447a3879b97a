"""`--url` for the store and job commands: the same commands through a running service's admin API.

`janus versions|activate|rollback|history|learn|jobs|cancel --url URL` send the request to the
service (token: `--token` or `$JANUS_ADMIN_TOKEN`) instead of opening the store or Redis. A local
dataset folder or archive given to `learn` is uploaded (a folder as tar.gz).

The service's JSON is parsed back into the models the local commands print (`Manifest`,
`AuditEntry`, `JobStatus`) and printed by the same functions: a table by default, JSON with
`--json`, whichever way a command goes.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from adapters_store import AuditEntry, Manifest
from adapters_store.cli import (
    Listed,
    print_entry,
    print_history,
    print_version,
    print_versions,
    wants_json,
)
from learner.jobs.cli import (
    ProgressBar,
    print_cancelled,
    print_job,
    print_jobs,
    print_learned,
    promotion_fields,
    train_overrides,
)
from learner.jobs.client import JobStatus
from service.client import ServiceError, admin_token, raise_for

Handler = Callable[[argparse.Namespace], int]

TIMEOUT = httpx.Timeout(600.0, connect=10.0)
"""Uploads and long answers may take minutes; a service that is not there fails fast."""


def _client(args: argparse.Namespace) -> httpx.Client:
    token = getattr(args, "token", None) or admin_token()
    if not token:
        raise ServiceError("the admin API needs a token: pass --token or set JANUS_ADMIN_TOKEN")
    return httpx.Client(
        base_url=args.url, timeout=TIMEOUT, headers={"Authorization": f"Bearer {token}"}
    )


def _call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    with _client(args) as http:
        try:
            r = http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise ServiceError(
                f"cannot reach the service at {args.url} ({err}); start it with `janus up`, "
                "or check --url"
            ) from None
        raise_for(r)
        return r.json()


def _archive(path: Path) -> tuple[str, bytes]:
    if path.is_file():
        return path.name, path.read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(path, arcname=path.name)
    return f"{path.name}.tar.gz", buf.getvalue()


def _learn(args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {
        "parent": args.parent,
        "method": args.method,
        "train": train_overrides(args),
        "reason": args.reason,
        **promotion_fields(args),
    }
    if args.key:
        fields["idempotency_key"] = args.key
    local = Path(args.path)
    if local.exists():
        name, data = _archive(local)
        answer = _call(
            args,
            "POST",
            "/admin/learn",
            files={"dataset": (name, data)},
            data={"request": json.dumps(fields)},
        )
    else:  # datasets/<sha256> or a path the workers can read
        answer = _call(args, "POST", "/admin/learn", json={**fields, "dataset": args.path})
    job = JobStatus.model_validate(answer)
    bar = ProgressBar(not args.json or sys.stderr.isatty())
    while args.wait and not job.final:
        time.sleep(1.0)
        job = JobStatus.model_validate(_call(args, "GET", f"/admin/jobs/{job.job_id}"))
        bar(job)
    return print_learned(job, as_json=args.json)


def _versions(args: argparse.Namespace) -> int:
    if getattr(args, "id", None):
        answer = _call(args, "GET", f"/admin/versions/{args.id}")
        manifest = Manifest.model_validate(answer["manifest"])
        extra = {k: answer.get(k) for k in ("quarantined", "aliases", "shadow")}
        print_version(
            manifest, answer["lineage"], answer["serving"], as_json=wants_json(args), extra=extra
        )
        return 0
    answer = _call(args, "GET", "/admin/versions")  # manifests, each with `serving`
    listed: list[Listed] = [
        (
            item["id"],
            Manifest.model_validate({k: v for k, v in item.items() if k not in LISTING_EXTRAS}),
        )
        for item in answer
    ]
    serving = next((item["id"] for item in answer if item["serving"]), None)
    quarantined = {item["id"]: item["quarantined"] for item in answer if item.get("quarantined")}
    aliases = {a: item["id"] for item in answer for a in item.get("aliases", [])}
    return print_versions(
        listed,
        serving,
        as_json=wants_json(args),
        where=args.url,
        quarantined=quarantined,
        aliases=aliases,
    )


LISTING_EXTRAS = ("serving", "quarantined", "rejected", "aliases")
"""What `GET /admin/versions` adds to each manifest."""


def _activate(args: argparse.Namespace) -> int:
    body = {
        "actor": args.actor,
        "reason": args.reason,
        "force": args.force,
        "min_shadowed": args.min_shadowed,
        "min_agreement": args.min_agreement,
    }
    answer = _call(args, "POST", f"/admin/versions/{args.id}/activate", json=body)
    print_entry(AuditEntry.model_validate(answer), as_json=wants_json(args))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    body = {"to": args.to, "actor": args.actor, "reason": args.reason}
    answer = _call(args, "POST", "/admin/rollback", json=body)
    print_entry(AuditEntry.model_validate(answer), as_json=wants_json(args))
    return 0


def _history(args: argparse.Namespace) -> int:
    entries = [AuditEntry.model_validate(e) for e in _call(args, "GET", "/admin/history")]
    print_history(entries, as_json=wants_json(args))
    return 0


def _jobs(args: argparse.Namespace) -> int:
    if args.id:
        job = JobStatus.model_validate(_call(args, "GET", f"/admin/jobs/{args.id}"))
        print_job(job, as_json=args.json)
        return 0
    answer = _call(args, "GET", "/admin/jobs", params={"limit": args.limit})
    print_jobs([JobStatus.model_validate(j) for j in answer], as_json=args.json)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    job = JobStatus.model_validate(_call(args, "POST", f"/admin/jobs/{args.id}/cancel"))
    return print_cancelled(job, as_json=args.json)


REMOTE: dict[str, Handler] = {
    "versions": _versions,
    "activate": _activate,
    "rollback": _rollback,
    "history": _history,
    "learn": _learn,
    "jobs": _jobs,
    "cancel": _cancel,
}
"""Each command's `--url` twin; errors are `ServiceError`s (one line, exit 1, in `service.cli`)."""


def _wrap(name: str, local: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        return REMOTE[name](args) if getattr(args, "url", None) else local(args)

    return run


def add_url_options(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Gives every store and job command `--url` and `--token`."""
    parsers: list[tuple[str, argparse.ArgumentParser]] = []
    for name in REMOTE:
        parser = subparsers.choices.get(name)
        if parser is None:
            continue
        parsers.append((name, parser))
        for action in parser._actions:  # `versions show ID`
            if isinstance(action, argparse._SubParsersAction):
                parsers += [(name, p) for p in action.choices.values()]
    for name, parser in parsers:
        # SUPPRESS: a nested parser's default must not overwrite its parent's value
        parser.add_argument(
            "--url",
            default=argparse.SUPPRESS,
            help="go through a running service's admin API (e.g. http://127.0.0.1:3000) "
            "instead of the local store and Redis",
        )
        parser.add_argument(
            "--token", default=argparse.SUPPRESS, help="admin token (default: $JANUS_ADMIN_TOKEN)"
        )
        local = parser.get_default("func")
        if local is not None:
            parser.set_defaults(func=_wrap(name, local))
