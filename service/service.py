"""The BentoML service (DESIGN.md §5): `bentoml serve service.service:Janus`.

Each worker process builds one `Serving` (store, hot-swapped model, adaptive batcher) and mounts
the FastAPI app of `service.api` (`/classify`, `/admin/*`, docs at `/api/docs`, also merged into
BentoML's `/docs.json`). Middleware (`service.middleware.Guard`) refuses admin requests without
the token and oversized bodies before reading them, and answers `/readyz`. `/metrics` is the API's
(`service.metrics.exposition`: the `janus_*` metrics of every worker process); BentoML's own
traffic metrics are off, as they label every request by its raw path, so made-up paths from
anyone would add series without bound.
"""

from __future__ import annotations

from typing import Any

import bentoml

from service.api import create_api
from service.config import ServiceSettings
from service.core import Serving
from service.metrics import forget_this_process
from service.middleware import Guard

SETTINGS = ServiceSettings.from_env()


def _serving() -> Serving:
    return bentoml.get_current_service().serving  # type: ignore[no-any-return]


def _probe() -> dict[str, Any] | None:
    try:
        return _serving().swapper.readiness()
    except Exception:  # not instantiated yet
        return None


api = create_api(_serving)


@bentoml.service(
    name="janus",
    workers=SETTINGS.workers,
    traffic={"timeout": 120},
    metrics={"enabled": False},  # its per-path labels; /metrics is service.api's
)
@bentoml.asgi_app(api, path="/")
class Janus:
    """Classification with hot-swapped versions; everything lives in `self.serving`."""

    def __init__(self) -> None:
        self.serving = Serving(SETTINGS)
        self.serving.start()

    def __is_ready__(self) -> bool:
        return self.serving.model is not None

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.serving.stop()
        forget_this_process()


Janus.add_asgi_middleware(  # type: ignore[attr-defined]
    Guard, limit=SETTINGS.body_limit, probe=_probe, admin_tokens=SETTINGS.admin_tokens
)
