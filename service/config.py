"""Settings of the serving side (DESIGN.md §5): tokens, request limits, hot swap, batching.

Read from `JANUS_*` variables (pydantic-settings, `adapters_store.settings.JanusSettings`). Where
the store, Redis and datasets are comes from `learner.jobs.settings.JobSettings`. `janus settings`
lists every variable.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
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
    admin_read_token: SecretStr | None = Field(
        None,
        description="optional bearer token for the admin API's reads only (GET: versions, jobs, "
        "history, /readyz detail); unset: only the admin token reads",
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
    max_images: int = Field(64, ge=1, le=1024, description="most images in one classify request")
    max_request_pixels: int = Field(
        100_000_000,
        gt=0,
        description="a classify request's decode budget: its images' pixels together, checked "
        "from their headers before any is decoded",
    )
    max_frames: int = Field(
        64, ge=1, description="most frames an image may declare (only the first is decoded)"
    )
    max_inflight: int = Field(
        32,
        ge=1,
        description="classify requests a worker holds at once; beyond, 503 with Retry-After at "
        "once",
    )
    decode_slots: int = Field(
        1,
        ge=1,
        description="large classify requests a worker decodes at once (the others wait their turn)",
    )
    small_request_pixels: int = Field(
        4_000_000,
        ge=0,
        description="requests with at most this many pixels to decode skip the decode slots",
    )
    image_formats: Annotated[tuple[str, ...], NoDecode] = Field(
        IMAGE_FORMATS, description="accepted image formats (comma-separated PIL names)"
    )
    max_top_k: int = Field(20, ge=1, description="largest top_k a request may ask for")
    poll_s: float = Field(
        1.0,
        gt=0,
        le=2.0,
        description="how often each worker reads the serving pointer while Redis announcements "
        "do not reach it (no Redis, or its subscription lost) (≤ 2)",
    )
    safety_poll_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="how often each worker reads the serving pointer while it hears Redis "
        "announcements (the safety net for a missed one; ≥ JANUS_POLL_S)",
    )
    retry_failed_s: float = Field(
        15.0, gt=0, description="wait before retrying a version that failed to load"
    )
    pinned_versions: int = Field(
        2,
        ge=1,
        le=16,
        description="versions each worker keeps loaded besides the serving one, for requests "
        "that ask for a version or an alias and for the shadowed version",
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

    @model_validator(mode="after")
    def _polls(self) -> ServiceSettings:
        if self.safety_poll_s < self.poll_s:
            raise ValueError(
                f"need JANUS_SAFETY_POLL_S ({self.safety_poll_s:g}) ≥ JANUS_POLL_S "
                f"({self.poll_s:g}): the poll behind announcements is the slower one"
            )
        return self

    @field_validator("image_formats", mode="before")
    @classmethod
    def _formats(cls, value: object) -> object:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if isinstance(value, list | tuple):
            return tuple(str(v).strip().upper() for v in value)
        return value

    @field_validator("admin_token", "admin_read_token", "classify_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("a token needs at least 16 characters (`openssl rand -hex 24`)")
        return value

    @property
    def intra_op_threads(self) -> int:
        """Threads per worker so that all workers together use the cores once."""
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)

    def admin_tokens(self, method: str) -> list[str]:
        """The tokens that may make an admin request with `method`: the admin token, and the
        read-only one for GET and HEAD; empty when the admin API is off."""
        if self.admin_token is None:
            return []
        tokens = [self.admin_token.get_secret_value()]
        if method in ("GET", "HEAD") and self.admin_read_token is not None:
            tokens.append(self.admin_read_token.get_secret_value())
        return tokens

    def body_limit(self, path: str) -> int:
        """Largest request body for `path`: dataset uploads may be larger than classify bodies."""
        return self.max_upload_bytes if path.startswith("/admin/") else self.max_body_bytes
