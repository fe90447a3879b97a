"""Bearer tokens of the HTTP routes: the admin token(s) and the classify token (DESIGN.md §5).

Missing token → 401 with `WWW-Authenticate: Bearer`, a wrong one → 403. Tokens are compared in
constant time. `/classify` and the Open Inference Protocol's model routes take the classify
token (or the admin token) when `JANUS_CLASSIFY_TOKEN` is set, and are open otherwise.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.config import ServiceSettings

_bearer = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def check(creds: HTTPAuthorizationCredentials | None, tokens: list[str], what: str) -> None:
    """Refuses a request whose bearer token is missing (401) or none of `tokens` (403)."""
    if creds is None:
        raise HTTPException(
            401,
            f"{what} needs `Authorization: Bearer <token>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not any(secrets.compare_digest(creds.credentials.encode(), t.encode()) for t in tokens):
        raise HTTPException(403, f"the bearer token is not valid for {what}")


def check_classify(
    settings: ServiceSettings, creds: HTTPAuthorizationCredentials | None, what: str
) -> None:
    """The classify token's check (nothing to check when `JANUS_CLASSIFY_TOKEN` is unset)."""
    if settings.classify_token is None:
        return
    tokens = [settings.classify_token.get_secret_value()]
    if settings.admin_token is not None:
        tokens.append(settings.admin_token.get_secret_value())
    check(creds, tokens, what)
