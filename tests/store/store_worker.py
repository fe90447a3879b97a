"""Publishes one version from its own process, for the crash and concurrency tests.

    python store_worker.py URI [--key KEY] [--activate] [--seed N] [--barrier DIR]

Prints `{"id": ...}`. `JANUS_STORE_CRASH_AT=<point>` makes the store SIGKILL it at that point.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from store_helpers import draft, files

from adapters_store import open_store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("uri")
    parser.add_argument("--key")
    parser.add_argument("--activate", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--barrier", type=Path, help="line up with other workers: DIR/go")
    args = parser.parse_args()
    store = open_store(args.uri)
    if args.barrier:  # say we are ready, then wait for the test to say go
        (args.barrier / f"ready-{os.getpid()}").touch()
        while not (args.barrier / "go").exists():
            time.sleep(0.002)
    manifest = store.publish(
        files(args.seed),
        draft(idempotency_key=args.key),
        activate=args.activate,
        actor="worker",
        reason="crash test",
    )
    print(json.dumps({"id": manifest.id}))


if __name__ == "__main__":
    main()
