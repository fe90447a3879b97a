"""Settings from `JANUS_*` environment variables, and the one default data directory.

Every component reads its settings through one pydantic-settings model (`JanusSettings`
subclasses): this module's `DataSettings` (where data lives) and `StoreSettings` (the store's
timings), `learner.jobs.settings.JobSettings`, `service.config.ServiceSettings` and
`service.client.ClientSettings`. A variable is the prefix `JANUS_` plus the field name in capitals;
unset or empty variables keep their defaults. `janus settings` prints them all, with the values
in effect, and the README's table is generated from these models.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Self

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_DATA_DIR = "~/.local/share/janus"
"""The data directory when `JANUS_DATA_DIR` is unset: store, embedded Redis, weights, logs."""


_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("janus_environ", default=None)
"""The mapping `JanusSettings.from_env` reads instead of `os.environ`, while it builds."""


class SettingsError(ValueError):
    """A `JANUS_*` variable holds a value its setting refuses; the message names the variable."""


class _Environ(EnvSettingsSource):
    """The environment source, reading a given mapping instead of `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # case-insensitive, like the settings' own environment source; empty means unset
        return {k.lower(): v for k, v in self._environ.items() if v or not self.env_ignore_empty}


class JanusSettings(BaseSettings):
    """Base of the settings models: `JANUS_` variables, frozen, refused with the variable's name."""

    model_config = SettingsConfigDict(
        env_prefix="JANUS_", frozen=True, extra="forbid", env_ignore_empty=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment (or `from_env`'s mapping); no .env or secret files."""
        environ = _ENVIRON.get()
        return (init_settings, env_settings if environ is None else _Environ(settings_cls, environ))

    @classmethod
    def env_var(cls, field: str) -> str:
        """The environment variable of a field."""
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Settings from the process environment, or from `environ` alone; `overrides` win.

        Raises:
            SettingsError: one line per refused variable, with its name.
        """
        token = _ENVIRON.set(environ)
        try:
            return cls(**overrides)
        except ValidationError as err:
            problems = "; ".join(
                f"{cls.env_var(str(e['loc'][0])) if e['loc'] else 'environment'}: {e['msg']}"
                for e in err.errors()
            )
            raise SettingsError(f"invalid settings: {problems}") from None
        finally:
            _ENVIRON.reset(token)


class DataSettings(JanusSettings):
    """Where data lives: one directory for everything local, and the version store."""

    data_dir: Path = Field(
        Path(DEFAULT_DATA_DIR),
        description="local data: the default store, embedded Redis, backbone weights, logs",
    )
    store: str = Field(
        "",
        description="version store: a path, file://, s3://bucket/prefix or memory://; "
        "empty: $JANUS_DATA_DIR/store",
    )

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def store_uri(self) -> str:
        """`store`, else the store folder of the data directory."""
        return self.store or str(self.data_dir / "store")


class StoreSettings(JanusSettings):
    """Timing of the store's coordination between processes (`JANUS_STORE_*`)."""

    model_config = SettingsConfigDict(env_prefix="JANUS_STORE_")

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


def default_store_uri(environ: Mapping[str, str] | None = None) -> str:
    """`$JANUS_STORE`, else `$JANUS_DATA_DIR/store`."""
    return DataSettings.from_env(os.environ if environ is None else environ).store_uri
