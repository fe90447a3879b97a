"""Validated settings of the serving side (DESIGN.md §5), read from `JANUS_*` environment variables.

JANUS_ADMIN_TOKEN        bearer token of the admin routes (unset: the admin API answers 403)
JANUS_CLASSIFY_TOKEN     bearer token of /classify (unset: classify is open)
JANUS_MAX_BODY_BYTES     largest classify request body (413 above, before decoding)
JANUS_MAX_UPLOAD_BYTES   largest dataset upload to /admin/learn
JANUS_MAX_PIXELS         largest image (width × height) a request may carry
JANUS_MAX_IMAGES         most images in one classify request
JANUS_IMAGE_FORMATS      accepted image formats (comma-separated PIL names)
JANUS_MAX_TOP_K          largest top_k
JANUS_POLL_S             how often each worker compares its version with the serving pointer
JANUS_RETRY_FAILED_S     how long a worker waits before retrying a version that failed to load
JANUS_MAX_BATCH          largest adaptive batch (images)
JANUS_BATCH_WAIT_MS      how long a batch may wait for more requests once the model is idle
JANUS_ENGINE             auto (ONNX Runtime, torch when a version has no ONNX), onnx, torch
JANUS_THREADS            intra-op threads per worker (default: CPU cores / workers)
JANUS_WORKERS            service worker processes
JANUS_PORT               port of `janus up` / `bentoml serve`

Where the store, Redis and datasets are comes from `learner.jobs.settings.JobSettings`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

_ENV = {
    "admin_token": "JANUS_ADMIN_TOKEN",
    "classify_token": "JANUS_CLASSIFY_TOKEN",
    "max_body_bytes": "JANUS_MAX_BODY_BYTES",
    "max_upload_bytes": "JANUS_MAX_UPLOAD_BYTES",
    "max_pixels": "JANUS_MAX_PIXELS",
    "max_images": "JANUS_MAX_IMAGES",
    "image_formats": "JANUS_IMAGE_FORMATS",
    "max_top_k": "JANUS_MAX_TOP_K",
    "poll_s": "JANUS_POLL_S",
    "retry_failed_s": "JANUS_RETRY_FAILED_S",
    "max_batch": "JANUS_MAX_BATCH",
    "batch_wait_ms": "JANUS_BATCH_WAIT_MS",
    "engine": "JANUS_ENGINE",
    "threads": "JANUS_THREADS",
    "workers": "JANUS_WORKERS",
    "port": "JANUS_PORT",
}

Engine = Literal["auto", "onnx", "torch"]


class ServiceSettings(BaseModel):
    """Limits, tokens, hot-swap timing and batching of the classification service."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    admin_token: SecretStr | None = Field(None, description="bearer token of the admin API")
    classify_token: SecretStr | None = Field(None, description="bearer token of /classify")
    max_body_bytes: int = Field(16 << 20, gt=0)
    max_upload_bytes: int = Field(1 << 30, gt=0)
    max_pixels: int = Field(40_000_000, gt=0, description="per image: width × height")
    max_images: int = Field(64, ge=1)
    image_formats: tuple[str, ...] = Field(("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"))
    max_top_k: int = Field(20, ge=1)
    poll_s: float = Field(1.0, gt=0, le=2.0, description="≤ 2 s (DESIGN.md §5)")
    retry_failed_s: float = Field(15.0, gt=0)
    max_batch: int = Field(32, ge=1)
    batch_wait_ms: float = Field(2.0, ge=0, le=1000)
    engine: Engine = "auto"
    threads: int | None = Field(None, ge=1)
    workers: int = Field(2, ge=1, le=64)
    port: int = Field(3000, ge=1, le=65535)

    @field_validator("image_formats", mode="before")
    @classmethod
    def _formats(cls, value: object) -> object:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if isinstance(value, list | tuple):
            return tuple(str(v).strip().upper() for v in value)
        return value

    @field_validator("admin_token", "classify_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("a token needs at least 16 characters (`openssl rand -hex 24`)")
        return value

    @property
    def intra_op_threads(self) -> int:
        """Threads per worker so that all workers together use the cores once."""
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)

    def body_limit(self, path: str) -> int:
        """Largest request body for `path`: dataset uploads may be larger than classify bodies."""
        return self.max_upload_bytes if path.startswith("/admin/") else self.max_body_bytes

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> ServiceSettings:
        """Settings from `JANUS_*` variables (unset or empty ones keep their default)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {f: env[v] for f, v in _ENV.items() if env.get(v)}
        values.update(overrides)
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            where = ", ".join(
                _ENV.get(str(e["loc"][0]), str(e["loc"][0])) for e in err.errors() if e["loc"]
            )
            where = where or "environment"
            raise ValueError(f"invalid service settings ({where}): {err}") from None
