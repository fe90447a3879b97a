"""The README's table of `JANUS_*` variables is the one the settings models generate."""

from __future__ import annotations

from pathlib import Path

from service.envdoc import markdown_table, readme_table, variables

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_settings_table_matches_the_settings_models() -> None:
    assert readme_table(README) == markdown_table(), (
        "README.md's settings table differs from the settings models; run `make readme-settings`"
    )


def test_the_table_lists_every_field_of_every_settings_model() -> None:
    names = {v.name for v in variables()}
    assert {"JANUS_DATA_DIR", "JANUS_STORE", "JANUS_REDIS_URL", "JANUS_ADMIN_TOKEN"} <= names
    assert {
        "JANUS_STORE_WAIT_S",
        "JANUS_MAX_PIXELS",
        "JANUS_URL",
        "JANUS_JOB_TIME_LIMIT_S",
    } <= names
    assert all(v.description for v in variables()), "every setting needs a description"
