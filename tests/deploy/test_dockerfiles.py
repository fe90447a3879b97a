"""deploy/*.Dockerfile, read offline (no Docker engine here): the images install the project from
its own dependency list, run as an unprivileged user that owns /data, check their health without
curl, and copy only what exists and what .dockerignore lets through."""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from service.up import FIRST_TASK, GOLDEN
from tests.deploy.manifests import (
    DEPLOY,
    DOCKERFILES,
    REPO,
    dockerfile,
    final_stage,
    image_env,
    one,
    pyproject,
)

EXTRAS = {"service": {"cpu", "s3"}, "worker": {"learn", "${ORT}", "s3"}}
"""What each image installs: `pip install ".[EXTRAS]"` from the copied source."""


def _args(image: str) -> dict[str, str]:
    """ARG NAME=default of every stage."""
    pairs = (ins.text.partition("=") for ins in dockerfile(image) if ins.keyword == "ARG")
    return {name: default for name, _, default in pairs}


def _copies(image: str) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context (not --from a stage)."""
    found = []
    for ins in dockerfile(image):
        if ins.keyword != "COPY" or "--from=" in ins.text:
            continue
        *sources, dest = [a for a in ins.text.split() if not a.startswith("--")]
        found.append((sources, dest))
    return found


def _ignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the repository) out of the context."""
    patterns = [
        line.strip().strip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        anywhere = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(Path(prefix).name, anywhere):
                return True
    return False


def test_no_hand_kept_requirements_list() -> None:
    assert not list(DEPLOY.rglob("*requirements*")), "install from pyproject.toml, not a copy"
    for path in DOCKERFILES.values():
        assert "requirements" not in path.read_text(), path.name


@pytest.mark.parametrize("image", sorted(EXTRAS))
def test_the_image_installs_the_project_with_its_extras(image: str) -> None:
    runs = " ".join(
        i.text for i in dockerfile(image) if i.keyword == "RUN" and "pip install" in i.text
    )
    (spec,) = re.findall(r"\"\.\[([^\]]*)\]\"", runs)
    assert set(spec.split(",")) == EXTRAS[image]
    defined = set(pyproject()["project"]["optional-dependencies"])
    args = _args(image)
    for extra in EXTRAS[image]:
        name = args[extra[2:-1]] if extra.startswith("${") else extra
        assert name in defined, f"{image}: the extra {name!r} is not in pyproject.toml"


def test_the_service_image_has_no_torch() -> None:
    assert "learn" not in EXTRAS["service"]
    steps = [i.text for i in dockerfile("service") if i.keyword in ("ARG", "RUN", "ENV")]
    assert not [text for text in steps if "torch" in text]
    assert image_env("service")["JANUS_ENGINE"] == "onnx"  # never the torch fallback


def test_the_worker_image_takes_torch_from_the_index_in_its_build_args() -> None:
    args = _args("worker")
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert args["ORT"] == "cpu"
    optional = pyproject()["project"]["optional-dependencies"]
    assert {"cpu", "gpu"} <= set(optional)  # --build-arg ORT=gpu for the CUDA image
    install = [i.text for i in dockerfile("worker") if "pip install" in i.text]
    assert any('--extra-index-url "${TORCH_INDEX}"' in text for text in install)


def _torch_check(image: str) -> str:
    (run,) = [
        i.text for i in dockerfile(image) if i.keyword == "RUN" and "import sys, torch" in i.text
    ]
    return run.split("&&", 1)[1]


@pytest.mark.parametrize("index", ["cpu", "cu126"])
def test_the_worker_build_fails_when_torch_is_not_the_indexs_build(index: str) -> None:
    # the build's own check, run here against this virtualenv's torch
    env = {**os.environ, "TORCH_INDEX": f"https://download.pytorch.org/whl/{index}"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(
        ["sh", "-c", _torch_check("worker")], env=env, capture_output=True, text=True, timeout=120
    )
    matches = (torch.version.cuda is not None) == (index != "cpu")
    assert (done.returncode == 0) == matches, done.stdout + done.stderr
    if not matches:
        assert f"is not the build of TORCH_INDEX={env['TORCH_INDEX']}" in done.stderr


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_every_copied_path_exists_and_is_in_the_build_context(image: str) -> None:
    for sources, _ in _copies(image):
        for source in sources:
            assert (REPO / source).exists(), f"{image}: COPY {source}: no such path"
            assert not _ignored(source), f"{image}: COPY {source}, which .dockerignore excludes"
    for heavy in (".venv", "runs", ".git", "tests", "service/__pycache__"):
        assert _ignored(heavy), f".dockerignore sends {heavy} to the build"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_the_image_runs_as_an_unprivileged_user_that_owns_its_data_volume(image: str) -> None:
    final = final_stage(image)
    uid, _, gid = one(final, "USER").text.partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit()  # numeric: runAsNonRoot checks it
    volume = one(final, "VOLUME").text
    assert volume == image_env(image)["JANUS_DATA_DIR"]
    at = final.index(one(final, "VOLUME"))
    before = " ".join(ins.text for ins in final[:at] if ins.keyword == "RUN")
    # /data exists, owned by the user, before VOLUME: a fresh named volume copies its owner
    assert f"--uid {uid}" in before and f"--gid {gid}" in before
    assert f"mkdir -p {volume}" in before and re.search(rf"chown \S+ {volume}\b", before)


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_the_health_check_needs_no_curl(image: str) -> None:
    final = final_stage(image)
    check = one(final, "HEALTHCHECK").argv
    assert check[0] == "janus-probe"
    copies = {dest: sources for sources, dest in _copies(image)}
    assert copies["/usr/local/bin/janus-probe"] == ["deploy/probe.py"]
    assert any(i.keyword == "COPY" and "--chmod=755 deploy/probe.py" in i.text for i in final)
    text = DOCKERFILES[image].read_text()
    assert "curl" not in text and "wget" not in text
    assert one(final, "ENTRYPOINT").argv == ["tini", "--"]  # signals forwarded, children reaped


def test_the_service_image_serves_the_bento_service() -> None:
    cmd = one(final_stage("service"), "CMD").argv
    service = pyproject()["tool"]["bentoml"]["build"]["service"]
    assert cmd[:3] == ["bentoml", "serve", service]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"


def _package_files() -> list[str]:
    """Every file of the three packages but bytecode, relative to the repository."""
    return [
        str(path.relative_to(REPO))
        for package in ("service", "learner", "adapters_store")
        for path in sorted((REPO / package).rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    ]


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_the_image_keeps_the_packages_whole_in_app(image: str) -> None:
    # an editable install: the packages run from /app, where the files they read beside their
    # modules are (a wheel would drop what is not a module: the console's static/)
    instructions = dockerfile(image)
    runs = " ".join(i.text for i in instructions if i.keyword == "RUN")
    assert '--editable ".[' in runs
    build = instructions[: instructions.index(final_stage(image)[0])]
    assert [i.text for i in build if i.keyword == "WORKDIR"] == ["/app"]
    copied = {source for sources, _ in _copies(image) for source in sources}
    assert {"service", "learner", "adapters_store", "pyproject.toml"} <= copied
    assert any(
        i.keyword == "COPY" and i.text == "--from=build /app /app" for i in final_stage(image)
    )
    assert [f for f in _package_files() if not f.endswith(".py")], "no files but modules?"
    assert not [f for f in _package_files() if _ignored(f)], ".dockerignore drops package files"


def test_the_worker_image_has_the_examples_where_janus_init_reads_them() -> None:
    assert {i.text for i in dockerfile("worker") if i.keyword == "WORKDIR"} == {"/app"}
    copied = [
        (Path(source), Path(dest)) for sources, dest in _copies("worker") for source in sources
    ]
    for folder in (FIRST_TASK, GOLDEN):
        assert folder.is_dir()
        path = folder.relative_to(REPO)
        assert any(
            path.is_relative_to(source) and dest == Path("/app") / source for source, dest in copied
        ), f"the worker image lacks {path} in /app"


def test_instructions_are_read_whole() -> None:
    # the reader joins continuation lines: every instruction starts with a Dockerfile keyword
    keywords = {"FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "USER", "VOLUME", "EXPOSE"}
    keywords |= {"HEALTHCHECK", "ENTRYPOINT", "CMD"}
    for image in DOCKERFILES:
        found = {ins.keyword for ins in dockerfile(image)}
        assert found <= keywords, f"{image}: {found - keywords}"
