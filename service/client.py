"""A small HTTP client of the service, for `janus classify` and `janus bench serve`.

The URL defaults to `$JANUS_URL`, else http://127.0.0.1:3000; the token to `$JANUS_CLASSIFY_TOKEN`,
else `$JANUS_ADMIN_TOKEN` (sent only when set).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:3000"


def default_url() -> str:
    return os.environ.get("JANUS_URL") or DEFAULT_URL


def auth_headers(token: str | None = None) -> dict[str, str]:
    token = token or os.environ.get("JANUS_CLASSIFY_TOKEN") or os.environ.get("JANUS_ADMIN_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


class ServiceError(RuntimeError):
    """The service answered with an error; the message carries its detail."""


def raise_for(r: httpx.Response) -> None:
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise ServiceError(f"{r.request.method} {r.request.url.path} → {r.status_code}: {detail}")


def classify(
    images: Sequence[Path | bytes],
    *,
    url: str | None = None,
    top_k: int = 5,
    token: str | None = None,
    client: httpx.Client | None = None,
) -> dict[str, Any]:
    """`POST /classify` with the images as multipart files; the service's JSON answer."""
    files = [
        ("images", (f"{i}.img", img if isinstance(img, bytes) else Path(img).read_bytes()))
        for i, img in enumerate(images)
    ]
    own = client is None
    http = client or httpx.Client(timeout=60)
    try:
        r = http.post(
            f"{url or default_url()}/classify",
            files=files,
            params={"top_k": top_k},
            headers=auth_headers(token),
        )
    except httpx.HTTPError as err:
        raise ServiceError(
            f"cannot reach the service at {url or default_url()} ({err}); start it with "
            "`janus up`, or pass --url"
        ) from None
    finally:
        if own:
            http.close()
    raise_for(r)
    return dict(r.json())
