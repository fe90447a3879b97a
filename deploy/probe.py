#!/usr/bin/env python
"""Health checks of the janus images, with nothing but Python (the images have no curl).

    janus-probe http [URL]           the service: exit 0 if URL answers 200
                                     (default http://127.0.0.1:3000/livez)
    janus-probe worker [--host H]    a learn worker: exit 0 if the `janus worker` of this host
                                     (its Celery node name ends in @H, default this hostname)
                                     answers a ping through Redis within --timeout seconds

The images install this file as `janus-probe`: the Dockerfiles' HEALTHCHECK, the compose file's
healthchecks and the worker's Kubernetes probes run it. A worker answers while it trains: the
Celery parent process answers, the job runs in its pool child. Exit 1, with one line on stderr,
when the check fails.
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence


def http(url: str, timeout: float) -> str | None:
    """None if `url` answers 200, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return None if response.status == 200 else f"{url} answered {response.status}"
    except urllib.error.HTTPError as err:
        return f"{url} answered {err.code}"
    except (urllib.error.URLError, OSError) as err:
        return f"{url}: {getattr(err, 'reason', err)}"


def worker(host: str, timeout: float) -> str | None:
    """None if a janus worker whose node name ends in `@host` answers a ping, else why not."""
    from learner.jobs.app import create_app
    from learner.jobs.settings import JobSettings

    settings = JobSettings.from_env()
    if not settings.redis_url:
        return "JANUS_REDIS_URL is not set: a worker in a container needs its Redis"
    app = create_app(settings)
    try:  # only this host's worker answers (the match runs on the workers' side)
        replies = app.control.ping(timeout=timeout, limit=1, pattern=f"*@{host}", matcher="glob")
    except Exception as err:  # Redis unreachable, refused password: one line, not a traceback
        return f"cannot ping through Redis: {type(err).__name__}: {err}"
    finally:
        app.close()
    if not replies:
        return f"no janus worker on {host} answered a ping within {timeout:g} s"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="janus-probe", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="check", required=True)
    get = sub.add_parser("http", help="the service answers 200")
    get.add_argument("url", nargs="?", default="http://127.0.0.1:3000/livez")
    get.add_argument("--timeout", type=float, default=5.0)
    ping = sub.add_parser("worker", help="this host's learn worker answers a ping")
    ping.add_argument("--host", default=socket.gethostname(), help="default: this hostname")
    ping.add_argument("--timeout", type=float, default=10.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.check == "http":
        problem = http(args.url, args.timeout)
    else:
        problem = worker(args.host, args.timeout)
    if problem:
        print(f"janus-probe: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
