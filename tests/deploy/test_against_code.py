"""The deployment files against the code they run: every `JANUS_*` variable they set is a
setting, every value parses in the settings models, every `janus` and `janus-probe` command
parses with the real parsers, and the service listens where the probes and the proxy look.

Everything is read from the code at test time (`service.envdoc.variables()`, `envdoc.MODELS`,
`service.cli.build_parser`), so a renamed setting or command fails here."""

from __future__ import annotations

import argparse
import importlib.util
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from adapters_store.settings import SettingsError
from service.cli import build_parser
from service.config import ServiceSettings
from service.envdoc import MODELS, variables
from tests.deploy.manifests import (
    BOTOCORE,
    DEPLOY,
    DOCKERFILES,
    container,
    containers,
    example_secrets,
    final_stage,
    image_env,
    k8s_object,
    one,
)

IMAGES = {"janus-service": "service", "janus-worker": "worker"}


def _image(reference: str) -> str | None:
    """`janus-worker:latest-cuda` → "worker"; None for another image (redis, nginx)."""
    return IMAGES.get(reference.partition(":")[0])


def environments(rendered: dict[str, Any]) -> Iterator[tuple[str, str | None, dict[str, str]]]:
    """(where, image, environment) of every container the compose file and the manifests start;
    a janus image's own ENV under what the file sets."""
    for name, service in rendered["services"].items():
        image = _image(service["image"])
        own = image_env(image) if image else {}
        yield f"compose {name}", image, {**own, **service.get("environment", {})}
    for c in containers():
        image = _image(c.spec["image"])
        own = image_env(image) if image else {}
        yield f"k8s {c.owner}", image, {**own, **c.env}


def commands(rendered: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    """(where, argv) of every command the files run: compose commands and health checks,
    Kubernetes containers and exec probes, the Dockerfiles' CMD and HEALTHCHECK."""
    for name, service in rendered["services"].items():
        for key in ("entrypoint", "command"):
            if service.get(key):
                yield f"compose {name} {key}", service[key]
        test = service.get("healthcheck", {}).get("test") or []
        if test[:1] == ["CMD"]:
            yield f"compose {name} healthcheck", test[1:]
    for c in containers():
        if c.argv:
            yield f"k8s {c.owner}", c.argv
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if "exec" in c.spec.get(probe, {}):
                yield f"k8s {c.owner} {probe}", c.spec[probe]["exec"]["command"]
    for image in DOCKERFILES:
        for keyword in ("CMD", "HEALTHCHECK"):
            yield f"{image}.Dockerfile {keyword}", one(final_stage(image), keyword).argv


def _probe_parser() -> argparse.ArgumentParser:
    spec = importlib.util.spec_from_file_location("janus_probe", DEPLOY / "probe.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parser: argparse.ArgumentParser = module.build_parser()
    return parser


def _parses(parser: argparse.ArgumentParser, argv: list[str], where: str) -> argparse.Namespace:
    try:
        return parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `{' '.join(argv)}` does not parse with {parser.prog}'s parser")


def test_every_janus_variable_is_a_setting(rendered: dict[str, Any]) -> None:
    known = {v.name for v in variables()}
    sets = [(where, env) for where, _, env in environments(rendered)]
    sets.append(("k8s secrets.env.example", example_secrets()))
    for image in DOCKERFILES:
        sets.append((f"{image}.Dockerfile ENV", image_env(image)))
    for where, env in sets:
        unknown = {k for k in env if k.startswith("JANUS_")} - known
        assert not unknown, f"{where} sets {unknown}, which no settings model reads"
        aws = {k for k in env if k.startswith("AWS_")} - BOTOCORE
        assert not aws, f"{where} sets {aws}, which botocore does not read"


def test_every_settings_model_accepts_every_value(rendered: dict[str, Any]) -> None:
    checked = []
    for where, image, env in environments(rendered):
        if image is None:
            continue
        for model, _ in MODELS:
            try:
                model.from_env(env)
            except SettingsError as err:
                pytest.fail(f"{where}: {model.__name__}: {err}")
        checked.append(where)
    assert len(checked) >= 7  # compose: service, workers, init; k8s: service, worker, init


def test_the_example_secrets_are_refused_until_replaced() -> None:
    with pytest.raises(SettingsError, match="JANUS_ADMIN_TOKEN"):
        ServiceSettings.from_env(example_secrets(filled=False))
    ServiceSettings.from_env(example_secrets())


def test_every_janus_command_parses(rendered: dict[str, Any]) -> None:
    parser = build_parser()
    ran = set()
    for where, argv in commands(rendered):
        if argv[0] == "janus":
            args = _parses(parser, argv[1:], where)
            ran.add(args.command)
    assert {"worker", "init"} <= ran


def test_every_probe_command_parses(rendered: dict[str, Any]) -> None:
    parser = _probe_parser()
    checks = set()
    for where, argv in commands(rendered):
        if argv[0] == "janus-probe":
            checks.add(_parses(parser, argv[1:], where).check)
    assert checks == {"http", "worker"}


def test_the_service_listens_where_probes_and_the_proxy_look(rendered: dict[str, Any]) -> None:
    cmd = one(final_stage("service"), "CMD").argv
    port = cmd[cmd.index("--port") + 1]
    service = container("Deployment/janus-service")
    assert [str(p["containerPort"]) for p in service.spec["ports"]] == [port]
    annotations = k8s_object("Deployment", "janus-service")["spec"]["template"]["metadata"]
    assert annotations["annotations"]["prometheus.io/port"] == port
    assert rendered["services"]["service"]["expose"] == [port]
    assert re.search(rf"http://service:{port};", (DEPLOY / "nginx.conf").read_text())
    parser = _probe_parser()
    urls = [parser.parse_args(["http"]).url]  # the default
    for where, argv in commands(rendered):
        if argv[:2] == ["janus-probe", "http"] and "worker" not in where:
            urls.append(_parses(parser, argv[1:], where).url)
    for url in urls:
        assert str(urlsplit(url).port) == port, url
