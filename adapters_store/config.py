"""Store settings, validated from the environment (`JANUS_STORE`, `JANUS_DATA_DIR`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


def default_store_uri(environ: Mapping[str, str] | None = None) -> str:
    """`$JANUS_STORE`, else `$JANUS_DATA_DIR/store`, with the data dir `~/.local/share/janus`."""
    env = os.environ if environ is None else environ
    if env.get("JANUS_STORE"):
        return env["JANUS_STORE"]
    data_dir = env.get("JANUS_DATA_DIR") or str(Path("~/.local/share/janus").expanduser())
    return str(Path(data_dir) / "store")


class StoreSettings(BaseModel):
    """Timing knobs of the store's coordination between processes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stale_after_s: float = Field(
        default=3600.0,
        gt=0,
        description="a publish whose owner cannot be checked (another host) is abandoned "
        "after this long",
    )
    lock_ttl_s: float = Field(
        default=60.0,
        gt=0,
        description="a metadata lock held by a process on another host expires after this long",
    )
    wait_s: float = Field(
        default=120.0,
        ge=0,
        description="how long to wait for another live publisher of the same idempotency key, "
        "or for a metadata lock",
    )
