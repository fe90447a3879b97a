"""One S3 server (moto's), reached by each process of the scale-out tier on a port of its own, so
that what every process asks of the store is counted: requests and bytes by method and key.

The ports share moto's in-process backend: one bucket, as several hosts would see one S3
endpoint. Conditional PUTs are made atomic as on S3 (`tests.store.conftest`)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from tests.service.stack import free_port
from tests.store.conftest import atomic_conditional_puts

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass
class Tally:
    """Requests and response bytes of one client, by (method, key)."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    bytes_out: Counter[tuple[str, str]] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, method: str, key: str, sent: int) -> None:
        with self.lock:
            self.requests[(method, key)] += 1
            self.bytes_out[(method, key)] += sent

    def count(self, method: str, prefix: str) -> tuple[int, int]:
        """(requests, bytes sent back) of `method` on keys under `prefix`."""
        with self.lock:
            hits = [k for k in self.requests if k[0] == method and k[1].startswith(prefix)]
            return sum(self.requests[k] for k in hits), sum(self.bytes_out[k] for k in hits)


class CountingS3:
    """moto's S3 on one loopback port per named client."""

    def __init__(self, bucket: str, clients: Iterable[str]) -> None:
        atomic_conditional_puts()
        self.bucket = bucket
        self.tallies: dict[str, Tally] = {}
        self.ports: dict[str, int] = {}
        self._servers: list[BaseWSGIServer] = []
        for name in clients:
            self.tallies[name] = Tally()
            app = self._counting(DomainDispatcherApplication(create_backend_app), name)
            server = make_server(
                "127.0.0.1", free_port(), app, True, request_handler=MotoRequestHandler
            )
            self.ports[name] = server.server_address[1]
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers.append(server)

    def _counting(self, app: WsgiApp, name: str) -> WsgiApp:
        prefix = f"/{self.bucket}/"

        def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            path = unquote(environ.get("PATH_INFO", ""))
            key = path[len(prefix) :] if path.startswith(prefix) else path
            sent = 0
            body = app(environ, start_response)
            try:
                for chunk in body:
                    sent += len(chunk)
                    yield chunk
            finally:
                if hasattr(body, "close"):
                    body.close()
                self.tallies[name].add(environ["REQUEST_METHOD"], key, sent)

        return counted

    def env(self, name: str) -> dict[str, str]:
        """The `AWS_*` variables of the client `name` (its own endpoint)."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.ports[name]}",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
