"""`janus up | classify | bench serve`: the service's commands (registered by `service.cli`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from service.client import ServiceError, classify, default_url


def _up(args: argparse.Namespace) -> int:
    from learner.jobs.settings import JobSettings
    from service.up import run_up

    data_dir = Path(args.data_dir) if args.data_dir else JobSettings.from_env().data_dir
    try:
        return run_up(data_dir, args.port, host=args.host, workers=args.workers)
    except (RuntimeError, TimeoutError) as err:
        print(f"janus: error: {err}", file=sys.stderr)
        return 1


def _classify(args: argparse.Namespace) -> int:
    try:
        answer = classify([Path(p) for p in args.images], url=args.url, top_k=args.top_k)
    except ServiceError as err:
        print(f"janus: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer))
        return 0
    print(f"version {answer['version']}")
    for path, result in zip(args.images, answer["results"], strict=True):
        preds = ", ".join(f"{p['label']} {p['score']:.3f}" for p in result["predictions"])
        print(f"{path}: {preds}")
    return 0


def _bench_serve(args: argparse.Namespace) -> int:
    from service.bench import run_bench

    return run_bench(args)


def register(
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
    bench: argparse._SubParsersAction | None = None,  # type: ignore[type-arg]
) -> None:
    """Adds `up` and `classify` to the `janus` parser, `serve` to `janus bench`, and `--url` to
    the store and job commands."""
    from service.remote import add_url_options

    add_url_options(subparsers)
    up = subparsers.add_parser(
        "up", help="start Redis, a learn worker and the service; learn a first version if none"
    )
    up.add_argument(
        "--data-dir", default=None, help="default $JANUS_DATA_DIR or ~/.local/share/janus"
    )
    up.add_argument("--port", type=int, default=3000)
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--workers", type=int, default=2, help="service worker processes")
    up.set_defaults(func=_up)

    cls = subparsers.add_parser("classify", help="classify images through a running service")
    cls.add_argument("images", nargs="+", metavar="IMAGE")
    cls.add_argument(
        "--url", default=None, help=f"service URL (default $JANUS_URL or {default_url()})"
    )
    cls.add_argument("--top-k", type=int, default=5)
    cls.add_argument("--json", action="store_true", help="print the service's JSON answer")
    cls.set_defaults(func=_classify)

    if bench is not None:
        serve = bench.add_parser(
            "serve", help="throughput and latency of a running service; ONNX Runtime vs torch"
        )
        serve.add_argument("--url", default=None)
        serve.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
        serve.add_argument("--requests", type=int, default=200, help="requests per level")
        serve.add_argument("--version", default=None, help="version for the engine comparison")
        serve.add_argument("--batch", type=int, default=8, help="batch of the engine comparison")
        serve.add_argument("--out", default="runs/bench-serve")
        serve.set_defaults(func=_bench_serve)
