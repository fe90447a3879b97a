"""`--url` for the store and job commands: the same commands through a running service's admin API.

`janus versions|activate|rollback|history|learn|jobs|cancel --url URL` send the request to the
service (token: `--token` or `$JANUS_ADMIN_TOKEN`) instead of opening the store or Redis. A local
dataset folder or archive given to `learn` is uploaded (a folder as tar.gz).
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

from service.client import ServiceError, admin_token, raise_for

Handler = Callable[[argparse.Namespace], int]


def _client(args: argparse.Namespace) -> httpx.Client:
    token = getattr(args, "token", None) or admin_token()
    if not token:
        raise ServiceError("the admin API needs a token: pass --token or set JANUS_ADMIN_TOKEN")
    return httpx.Client(
        base_url=args.url, timeout=600, headers={"Authorization": f"Bearer {token}"}
    )


def _call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    with _client(args) as http:
        try:
            r = http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise ServiceError(f"cannot reach the service at {args.url} ({err})") from None
        raise_for(r)
        return r.json()


def _archive(path: Path) -> tuple[str, bytes]:
    if path.is_file():
        return path.name, path.read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(path, arcname=path.name)
    return f"{path.name}.tar.gz", buf.getvalue()


def _learn(args: argparse.Namespace) -> Any:
    from learner.jobs.cli import parse_setting

    train = dict(parse_setting(item) for item in args.set)
    if args.epochs:
        train["epochs"] = args.epochs
    fields: dict[str, Any] = {
        "parent": args.parent,
        "method": args.method,
        "train": train,
        "activation": args.activation,
        "gate_accuracy": args.gate_accuracy,
        "reason": args.reason,
    }
    if args.key:
        fields["idempotency_key"] = args.key
    local = Path(args.path)
    if local.exists():
        name, data = _archive(local)
        job = _call(
            args,
            "POST",
            "/admin/learn",
            files={"dataset": (name, data)},
            data={"request": json.dumps(fields)},
        )
    else:  # datasets/<sha256> or a path the workers can read
        job = _call(args, "POST", "/admin/learn", json={**fields, "dataset": args.path})
    while args.wait and job.get("state") not in ("succeeded", "failed", "cancelled"):
        time.sleep(1.0)
        job = _call(args, "GET", f"/admin/jobs/{job['job_id']}")
    return job


def _versions(args: argparse.Namespace) -> Any:
    if getattr(args, "id", None):
        return _call(args, "GET", f"/admin/versions/{args.id}")
    return _call(args, "GET", "/admin/versions")


def _jobs(args: argparse.Namespace) -> Any:
    if args.id:
        return _call(args, "GET", f"/admin/jobs/{args.id}")
    return _call(args, "GET", "/admin/jobs", params={"limit": args.limit})


REMOTE: dict[str, Callable[[argparse.Namespace], Any]] = {
    "versions": _versions,
    "activate": lambda a: _call(
        a, "POST", f"/admin/versions/{a.id}/activate", json={"actor": a.actor, "reason": a.reason}
    ),
    "rollback": lambda a: _call(
        a, "POST", "/admin/rollback", json={"to": a.to, "actor": a.actor, "reason": a.reason}
    ),
    "history": lambda a: _call(a, "GET", "/admin/history"),
    "learn": _learn,
    "jobs": _jobs,
    "cancel": lambda a: _call(a, "POST", f"/admin/jobs/{a.id}/cancel"),
}


def _wrap(name: str, local: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        if not getattr(args, "url", None):
            return local(args)
        try:
            answer = REMOTE[name](args)
        except ServiceError as err:
            print(f"janus: error: {err}", file=sys.stderr)
            return 1
        print(json.dumps(answer, indent=2, ensure_ascii=False))
        failed = name == "learn" and answer.get("state") in ("failed", "cancelled")
        return 1 if failed else 0

    return run


def add_url_options(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Gives every store and job command `--url` and `--token` (prints the service's JSON)."""
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
        parser.add_argument(
            "--url", default=argparse.SUPPRESS, help="go through a running service's admin API"
        )
        parser.add_argument(
            "--token", default=argparse.SUPPRESS, help="admin token (default $JANUS_ADMIN_TOKEN)"
        )
        local = parser.get_default("func")
        if local is not None:
            parser.set_defaults(func=_wrap(name, local))
