"""ASGI middleware: the admin token and body limits before any body is read, and `/readyz`.

`Guard` is the one middleware the service installs; from the outside in:

1. `Readiness` answers `GET /readyz`: 503 until this worker has a version loaded. Anyone sees
   whether it is ready and which version it serves; the detail (the pointer it follows, its last
   load failure, its pid) only a request with an admin token (the read-only one will do).
2. `AdminGate` answers a request to `/admin/...` without a valid token at once (401 without a
   token, 403 with a wrong one or a read-only one for a change, 403 when the admin API is off),
   before a byte of its body is read, whatever its length or encoding.
3. `BodyLimit` answers 413 when `Content-Length` is above the limit, before reading the body, and
   counts the bytes of a body without one (chunked), stopping at the limit.

The routes check the tokens again (`service.api`): the gate only makes refusing cheap.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]
ASGIApp = Callable[[Scope, Receive, Send], Any]


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    """413 for bodies over `limit(path)` bytes."""

    def __init__(self, app: ASGIApp, limit: Callable[[str], int]) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _json(send, 400, {"detail": "Content-Length is not a number"})
                return
            if declared > limit:
                await _json(send, 413, _too_large(declared, limit))
                return
            await self.app(scope, receive, send)
            return
        # no Content-Length: read the body up to the limit, then replay it
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                await _json(send, 413, _too_large(size, limit))
                return
        body, sent = b"".join(chunks), False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _too_large(size: int, limit: int) -> dict[str, Any]:
    return {
        "detail": f"request body of {size} bytes is above the limit of {limit} "
        "(JANUS_MAX_BODY_BYTES, or JANUS_MAX_UPLOAD_BYTES for /admin/learn); send fewer or "
        "smaller images"
    }


PUBLIC_READINESS = ("ready", "version", "engine")
"""What `/readyz` tells a request without the admin token."""


def bearer(scope: Scope) -> str | None:
    """The bearer token of a request's `Authorization` header, if any."""
    header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _valid(token: str | None, expected: list[str]) -> bool:
    return token is not None and any(
        secrets.compare_digest(token.encode(), e.encode()) for e in expected
    )


Tokens = Callable[[str], list[str]]
"""The tokens accepted for an admin request with a given method (`ServiceSettings.admin_tokens`)."""


class Readiness:
    """`GET /readyz` → 200 when a version is loaded, else 503; the detail for admins only."""

    def __init__(
        self,
        app: ASGIApp,
        probe: Callable[[], dict[str, Any] | None],
        admin_tokens: Tokens = lambda _method: [],
    ) -> None:
        self.app, self.probe, self.admin_tokens = app, probe, admin_tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/readyz" and scope["method"] == "GET":
            detail = self.probe() or {"ready": False, "detail": "the service is starting"}
            if not _valid(bearer(scope), self.admin_tokens("GET")):
                detail = {k: v for k, v in detail.items() if k in PUBLIC_READINESS}
            await _json(send, 200 if detail.get("ready") else 503, detail)
            return
        await self.app(scope, receive, send)


class AdminGate:
    """`/admin/...` without a token valid for its method → 401/403 at once, the body unread."""

    def __init__(self, app: ASGIApp, admin_tokens: Tokens) -> None:
        self.app, self.admin_tokens = app, admin_tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/admin" or path.startswith("/admin/")):
            await self.app(scope, receive, send)
            return
        expected, token = self.admin_tokens(scope["method"]), bearer(scope)
        if not expected:
            await _json(send, 403, {"detail": "the admin API is off: set JANUS_ADMIN_TOKEN"})
        elif token is None:
            await _json(
                send, 401, {"detail": "the admin API needs `Authorization: Bearer <token>`"}
            )
        elif not _valid(token, expected):
            await _json(send, 403, {"detail": "the bearer token is not valid for the admin API"})
        else:
            await self.app(scope, receive, send)


class Guard:
    """`Readiness`, then `AdminGate`, then `BodyLimit`, around the app (the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        limit: Callable[[str], int],
        probe: Callable[[], dict[str, Any] | None],
        admin_tokens: Tokens,
    ) -> None:
        inner = AdminGate(BodyLimit(app, limit), admin_tokens)
        self.app = Readiness(inner, probe, admin_tokens)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
