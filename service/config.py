"""Settings of the serving side (DESIGN.md §5): tokens, request limits, hot swap, batching.

Read from `JANUS_*` variables (pydantic-settings, `adapters_store.settings.JanusSettings`). Where
the store, Redis and datasets are comes from `learner.jobs.settings.JobSettings`. `janus settings`
lists every variable.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from adapters_store.settings import JanusSettings
from learner.data.images import IMAGE_FORMATS, MAX_PIXELS

Engine = Literal["auto", "onnx", "torch"]


class ServiceSettings(JanusSettings):
    """Limits, tokens, hot-swap timing and batching of the classification service."""

    admin_token: SecretStr | None = Field(
        None,
        description="bearer token of the admin routes (16+ characters); unset: the admin API "
        "answers 403 (`janus up` makes one)",
    )
    classify_token: SecretStr | None = Field(
        None, description="bearer token of /classify; unset: classify is open"
    )
    max_body_bytes: int = Field(
        16 << 20, gt=0, description="largest classify request body (413 before reading it)"
    )
    max_upload_bytes: int = Field(
        1 << 30, gt=0, description="largest dataset upload to /admin/learn"
    )
    max_pixels: int = Field(
        MAX_PIXELS, gt=0, description="largest image (width × height), checked before decoding"
    )
    max_images: int = Field(64, ge=1, description="most images in one classify request")
    image_formats: Annotated[tuple[str, ...], NoDecode] = Field(
        IMAGE_FORMATS, description="accepted image formats (comma-separated PIL names)"
    )
    max_top_k: int = Field(20, ge=1, description="largest top_k a request may ask for")
    poll_s: float = Field(
        1.0,
        gt=0,
        le=2.0,
        description="how often each worker compares its version with the serving pointer (≤ 2)",
    )
    retry_failed_s: float = Field(
        15.0, gt=0, description="wait before retrying a version that failed to load"
    )
    max_batch: int = Field(32, ge=1, description="largest adaptive batch (images)")
    batch_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="how long a batch may wait for more requests"
    )
    engine: Engine = Field(
        "auto", description="auto (ONNX Runtime; torch for a version without ONNX), onnx, torch"
    )
    threads: int | None = Field(
        None, ge=1, description="intra-op threads per worker; unset: CPU cores / workers"
    )
    workers: int = Field(2, ge=1, le=64, description="service worker processes")
    port: int = Field(3000, ge=1, le=65535, description="port of `janus up` / `bentoml serve`")

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
