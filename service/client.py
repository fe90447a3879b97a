"""A small HTTP client of the service, for `janus classify`, `--url` and `janus bench serve`.

`ClientSettings`: the URL defaults to `$JANUS_URL`, else http://127.0.0.1:3000; the token to
`$JANUS_CLASSIFY_TOKEN`, else `$JANUS_ADMIN_TOKEN` (sent only when set).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field, SecretStr

from adapters_store.settings import JanusSettings

DEFAULT_URL = "http://127.0.0.1:3000"


class ClientSettings(JanusSettings):
    """Where the command line finds the service, and the tokens it sends."""

    url: str = Field(
        DEFAULT_URL, description="the service that `janus classify` and `--url` commands call"
    )
    admin_token: SecretStr | None = Field(None, description="sent to the admin routes")
    classify_token: SecretStr | None = Field(None, description="sent to /classify")


def default_url() -> str:
    return ClientSettings.from_env().url


def admin_token() -> str | None:
    """`$JANUS_ADMIN_TOKEN`, if set."""
    token = ClientSettings.from_env().admin_token
    return token.get_secret_value() if token else None


def auth_headers(token: str | None = None) -> dict[str, str]:
    """The classify token: `token`, else `$JANUS_CLASSIFY_TOKEN`, else `$JANUS_ADMIN_TOKEN`."""
    settings = ClientSettings.from_env()
    stored = settings.classify_token or settings.admin_token
    token = token or (stored.get_secret_value() if stored else None)
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
    version: str | None = None,
    alias: str | None = None,
) -> dict[str, Any]:
    """`POST /classify` with the images as multipart files; the service's JSON answer (from
    `version`, or the version `alias` names, when given)."""
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
            params={
                "top_k": top_k,
                **({"version": version} if version else {}),
                **({"alias": alias} if alias else {}),
            },
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
