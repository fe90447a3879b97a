"""Every `JANUS_*` variable, from the settings models: `janus settings` and the README's table.

The table is generated, never written by hand: `janus settings --markdown` prints it, and
`make readme-settings` rewrites the block of README.md between the `settings:begin` and
`settings:end` markers (a test fails when the two drift apart).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from adapters_store.settings import DataSettings, JanusSettings, StoreSettings
from learner.jobs.redis_url import redacted
from learner.jobs.settings import JobSettings
from service.client import ClientSettings
from service.config import ServiceSettings

MODELS: tuple[tuple[type[JanusSettings], str], ...] = (
    (DataSettings, "every process"),
    (StoreSettings, "every process that opens the store"),
    (JobSettings, "worker, service, CLI"),
    (ServiceSettings, "service, `janus up`"),
    (ClientSettings, "CLI (`classify`, `--url`)"),
)
"""The settings models, and which processes read each."""

BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


@dataclass(frozen=True)
class Variable:
    """One environment variable: the model field it sets, its default and meaning."""

    name: str
    model: type[JanusSettings]
    field: str
    default: str
    read_by: str
    description: str


def _shown(value: Any, sep: str = ", ") -> str:
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "set" if value.get_secret_value() else "unset"
    if isinstance(value, tuple | list):
        return sep.join(str(v) for v in value) or "empty"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value == "":
        return "empty"
    return str(value)


def variables() -> list[Variable]:
    """Every variable once, in model order (a variable two models read lists both readers)."""
    found: dict[str, Variable] = {}
    for model, read_by in MODELS:
        inherited = {n for base in model.__mro__[1:] for n in getattr(base, "model_fields", {})}
        for name, info in model.model_fields.items():
            var = model.env_var(name)
            if name in inherited:  # listed with the model that declares it
                continue
            if var in found:  # the same variable read by another component
                found[var] = replace(found[var], read_by=f"{found[var].read_by}; {read_by}")
                continue
            sep = ":" if name == "dataset_roots" else ","
            found[var] = Variable(
                var, model, name, _shown(info.default, sep), read_by, info.description or ""
            )
    return list(found.values())


def markdown_table() -> str:
    """The README's table of variables."""
    lines = ["| variable | default | read by | what it sets |", "|---|---|---|---|"]
    for v in variables():
        default = v.default.replace("|", "\\|")
        text = v.description.replace("|", "\\|")
        lines.append(f"| `{v.name}` | {default} | {v.read_by} | {text} |")
    return "\n".join(lines) + "\n"


def current(environ: Mapping[str, str]) -> list[tuple[str, str, bool]]:
    """(variable, value in effect, set in `environ`) for every variable; secrets as set/unset,
    and URLs without their password.

    Raises:
        SettingsError: a variable holds a value its setting refuses.
    """
    values: dict[str, str] = {}
    for model, _ in MODELS:
        settings = model.from_env(environ)
        for name in model.model_fields:
            shown = _shown(getattr(settings, name))
            if "://" in shown:  # a URL's passwords (the user's, a Sentinel's) as ***
                shown = redacted(shown)
            values.setdefault(model.env_var(name), shown)
    return [(v.name, values[v.name], bool(environ.get(v.name))) for v in variables()]


def rewrite_readme(path: Path) -> bool:
    """Replaces the block between the markers with the generated table; True if it changed."""
    text = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + r"\n.*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{path} has no {BEGIN} … {END} block to rewrite")
    new = pattern.sub(lambda _: f"{BEGIN}\n{markdown_table()}{END}", text)
    path.write_text(new)
    return new != text


def readme_table(path: Path) -> str:
    """The table currently between the markers of `path`."""
    text = path.read_text()
    start, end = text.index(BEGIN) + len(BEGIN) + 1, text.index(END)
    return text[start:end]
