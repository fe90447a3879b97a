"""`janus up | init | classify | settings | bench serve`: the service's commands (`service.cli`);
`eval`, `alias` and `shadow` come from `service.promotion`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import httpx

from adapters_store.cli import add_command, print_json, print_table
from adapters_store.settings import DEFAULT_DATA_DIR
from service.client import DEFAULT_URL, ServiceError, classify


def _up(args: argparse.Namespace) -> int:
    from learner.jobs.settings import JobSettings
    from service.up import run_up

    data_dir = Path(args.data_dir) if args.data_dir else JobSettings.from_env().data_dir
    try:
        return run_up(data_dir, args.port, host=args.host, workers=args.workers)
    except (RuntimeError, TimeoutError) as err:
        print(f"janus: error: {err}", file=sys.stderr)
        return 1


def _init(args: argparse.Namespace) -> int:
    from learner.jobs.redis_embedded import current_url
    from learner.jobs.settings import JobSettings
    from service.up import init_store

    settings = JobSettings.from_env()
    try:
        return init_store(settings, current_url(settings.redis_url, settings.data_dir))
    except (RuntimeError, TimeoutError) as err:
        print(f"janus: error: {err}", file=sys.stderr)
        return 1


def _classify(args: argparse.Namespace) -> int:
    answer = classify(
        [Path(p) for p in args.images],
        url=args.url,
        top_k=args.top_k,
        version=args.version,
        alias=args.alias,
    )
    if args.json:
        print_json(answer)
        return 0
    print(f"version {answer['version']}")
    for path, result in zip(args.images, answer["results"], strict=True):
        preds = ", ".join(f"{p['label']} {p['score']:.3f}" for p in result["predictions"])
        print(f"{path}: {preds}")
    return 0


def _settings(args: argparse.Namespace) -> int:
    from service import envdoc

    if args.markdown:
        print(envdoc.markdown_table(), end="")
        return 0
    rows = [
        {"variable": name, "value": value, "source": "environment" if set_ else "default"}
        for name, value, set_ in envdoc.current(os.environ)
    ]
    if args.json:
        print_json(rows)
    else:
        print_table(
            [
                ["VARIABLE", "VALUE", "FROM"],
                *([r["variable"], r["value"], r["source"]] for r in rows),
            ]
        )
    return 0


def _bench_serve(args: argparse.Namespace) -> int:
    from service.bench import run_bench

    try:
        return run_bench(args)
    except httpx.HTTPError as err:
        raise ServiceError(
            f"cannot reach the service at {args.url or 'JANUS_URL'} ({err}); start it with "
            "`janus up`, or pass --url"
        ) from None


def register(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    bench: argparse._SubParsersAction | None = None,  # type: ignore[type-arg]
) -> None:
    """Adds `up`, `classify` and `settings` to the `janus` parser, `serve` to `janus bench`, and
    `--url` to the store and job commands."""
    from service.remote import add_url_options

    add_url_options(subparsers)
    url_help = f"service URL (default: $JANUS_URL, else {DEFAULT_URL})"

    up = add_command(
        subparsers,
        "up",
        "start Redis, a learn worker and the service; learn a first version if none",
    )
    up.add_argument(
        "--data-dir",
        default=None,
        help=f"store, Redis, logs (default: $JANUS_DATA_DIR, else {DEFAULT_DATA_DIR})",
    )
    up.add_argument("--port", type=int, default=3000, help="port of the service")
    up.add_argument(
        "--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface"
    )
    up.add_argument("--workers", type=int, default=2, help="service worker processes")
    up.set_defaults(func=_up)

    init = add_command(
        subparsers,
        "init",
        "learn a first version from examples/ if the store has none (a deployment's first step; "
        "needs Redis and a running `janus worker`)",
    )
    init.set_defaults(func=_init)

    cls = add_command(subparsers, "classify", "classify images through a running service")
    cls.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    cls.add_argument("--url", default=None, help=url_help)
    cls.add_argument("--top-k", type=int, default=5, help="labels per image, best first")
    cls.add_argument("--json", action="store_true", help="print the service's JSON answer")
    pin = cls.add_mutually_exclusive_group()
    pin.add_argument(
        "--version", metavar="ID", help="answer with this version, not the serving one"
    )
    pin.add_argument("--alias", metavar="NAME", help="answer with the version this alias names")
    cls.set_defaults(func=_classify)

    from service.promotion import register as register_promotion

    register_promotion(subparsers)

    settings = add_command(
        subparsers,
        "settings",
        "every JANUS_* variable: the value in effect and where it comes from",
        description="Every JANUS_* variable: the value in effect (secrets as set/unset) and\n"
        "whether it comes from the environment or the default.",
    )
    form = settings.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print JSON")
    form.add_argument(
        "--markdown", action="store_true", help="print the README's table: defaults and meanings"
    )
    settings.set_defaults(func=_settings)

    if bench is not None:
        serve = add_command(
            bench, "serve", "throughput and latency of a running service; ONNX Runtime vs torch"
        )
        serve.add_argument("--url", default=None, help=url_help)
        serve.add_argument(
            "--concurrency", default="1,4,16", help="comma-separated levels of concurrent clients"
        )
        serve.add_argument("--requests", type=int, default=200, help="requests per level")
        serve.add_argument(
            "--version",
            default=None,
            help="version for the engine comparison (default: the serving one)",
        )
        serve.add_argument("--batch", type=int, default=8, help="batch of the engine comparison")
        serve.add_argument(
            "--out", default="runs/bench-serve", help="folder for results.json and results.md"
        )
        serve.set_defaults(func=_bench_serve)
