"""ASGI middleware: body limits before any decoding, and `/readyz` with its detail.

`BodyLimit` answers 413 when `Content-Length` is above the limit, before reading the body, and
counts the bytes of a body without one (chunked), stopping at the limit. `Readiness` answers
`GET /readyz`: 503 until this worker has a version loaded, with what it serves, the pointer it
follows and its last load failure as JSON.
"""

from __future__ import annotations

import json
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


class Readiness:
    """`GET /readyz` → 200 with detail when a version is loaded, else 503."""

    def __init__(self, app: ASGIApp, probe: Callable[[], dict[str, Any] | None]) -> None:
        self.app, self.probe = app, probe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/readyz" and scope["method"] == "GET":
            detail = self.probe() or {"ready": False, "detail": "the service is starting"}
            await _json(send, 200 if detail.get("ready") else 503, detail)
            return
        await self.app(scope, receive, send)
