"""deploy/docker-compose.yml as the real `docker compose config` renders it (no Docker engine):
the service and workers scale, the proxy follows the replicas, every long-running container has
a health check, and the secrets are required."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from adapters_store.settings import DataSettings
from learner.jobs.settings import JobSettings
from service.envdoc import MODELS
from tests.deploy.manifests import (
    BOTOCORE,
    COMPOSE_FILE,
    DEPLOY,
    DOCKERFILES,
    REPO,
    SECRETS,
    compose_config,
    duration_s,
    pyproject,
)

SCALED = ("service", "worker", "worker-gpu")
"""Services run with `--scale NAME=N`."""


def test_the_file_renders_the_whole_stack(rendered: dict[str, Any]) -> None:
    assert {"redis", "service", "proxy", "worker", "init"} <= set(rendered["services"])
    assert rendered["name"] == "janus"


@pytest.mark.parametrize("name", SCALED)
def test_a_scaled_service_has_no_host_port_and_no_fixed_name(
    rendered: dict[str, Any], name: str
) -> None:
    service = rendered["services"][name]
    assert not service.get("ports"), f"{name} publishes a host port: a second replica cannot start"
    assert "container_name" not in service and "hostname" not in service


def test_only_the_proxy_publishes_a_port_and_janus_http_port_sets_it(tmp_path: Path) -> None:
    done = compose_config({**SECRETS, "JANUS_HTTP_PORT": "8123"}, tmp_path)
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    published = {
        name: [port["published"] for port in service["ports"]]
        for name, service in services.items()
        if service.get("ports")
    }
    assert published == {"proxy": ["8123"]}


def test_every_long_running_service_has_a_health_check(rendered: dict[str, Any]) -> None:
    for name, service in rendered["services"].items():
        if service.get("restart") == "no":  # a one-shot (init)
            continue
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"


def test_the_proxy_resolves_the_service_replicas_at_request_time(
    rendered: dict[str, Any],
) -> None:
    proxy = rendered["services"]["proxy"]
    (mount,) = [v for v in proxy["volumes"] if v["target"].startswith("/etc/nginx/")]
    conf = Path(mount["source"])
    assert conf.is_file() and conf.parent == DEPLOY and mount["read_only"]
    text = conf.read_text()
    # Docker's DNS, asked again every few seconds, so new replicas receive requests
    assert re.search(r"^resolver\s+127\.0\.0\.11\s+valid=\d+s\b", text, re.M)
    # the upstream in a variable: nginx resolves it per request instead of once at start
    found = re.search(r"set\s+\$(\w+)\s+http://([\w.-]+):(\d+);", text)
    assert found, "no `set $var http://host:port;` upstream in the proxy config"
    var, host, port = found.groups()
    assert re.search(rf"proxy_pass\s+\${var};", text)
    assert host == "service" and host in rendered["services"]
    assert port in rendered["services"]["service"]["expose"]
    (published,) = proxy["ports"]
    assert re.search(rf"^\s*listen\s+{published['target']};", text, re.M)


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_proxy_config(tmp_path: Path) -> None:
    main = tmp_path / "nginx.conf"
    temp = " ".join(f"{kind}_temp_path {tmp_path / kind};" for kind in ("client_body", "proxy"))
    main.write_text(
        f"pid {tmp_path / 'nginx.pid'}; error_log {tmp_path / 'error.log'};\n"
        f"events {{}}\nhttp {{ {temp} include {DEPLOY / 'nginx.conf'}; }}\n"
    )
    done = subprocess.run(
        ["nginx", "-t", "-c", str(main), "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_a_missing_secret_stops_compose_with_its_name(tmp_path: Path, missing: str) -> None:
    env = {k: v for k, v in SECRETS.items() if k != missing}
    done = compose_config(env, tmp_path)
    assert done.returncode != 0
    assert f"required variable {missing} is missing a value" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("name", "image"),
    [("service", "service"), ("worker", "worker"), ("worker-gpu", "worker"), ("init", "worker")],
)
def test_images_are_built_from_the_projects_dockerfiles(
    rendered: dict[str, Any], name: str, image: str
) -> None:
    service = rendered["services"][name]
    assert Path(service["build"]["context"]) == REPO
    assert REPO / service["build"]["dockerfile"] == DOCKERFILES[image]
    assert service["image"].startswith(f"janus-{image}:")


def test_the_gpu_worker_builds_the_cuda_image_and_reserves_a_gpu(
    rendered: dict[str, Any],
) -> None:
    gpu = rendered["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]  # not started by a plain `up`
    args = gpu["build"]["args"]
    assert args["TORCH_INDEX"].rstrip("/").rsplit("/", 1)[-1].startswith("cu")
    assert args["ORT"] == "gpu" and "gpu" in pyproject()["project"]["optional-dependencies"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert gpu["image"] != rendered["services"]["worker"]["image"]


def test_a_stopped_worker_has_time_to_end_its_job(rendered: dict[str, Any]) -> None:
    workers = {
        name: service
        for name, service in rendered["services"].items()
        if (service.get("command") or [])[:2] == ["janus", "worker"]
    }
    assert {"worker", "worker-gpu"} <= set(workers)
    for name, service in workers.items():
        limit = JobSettings.from_env(service["environment"]).job_time_limit_s
        grace = duration_s(service.get("stop_grace_period", "10s"))
        assert grace > limit, f"{name}: stop_grace_period {grace:g} s ≤ job time limit {limit:g} s"


def test_every_janus_container_keeps_the_store_on_one_named_volume(
    rendered: dict[str, Any],
) -> None:
    for name in ("service", "worker", "worker-gpu", "init"):
        service = rendered["services"][name]
        data = DataSettings.from_env(service["environment"])
        mounts = [v for v in service["volumes"] if Path(v["target"]) == data.data_dir]
        assert [(m["type"], m["source"]) for m in mounts] == [("volume", "janus-data")], name
        assert Path(data.store_uri).is_relative_to(data.data_dir)
    assert "janus-data" in rendered["volumes"]


def test_workers_have_shared_memory_for_the_image_readers(rendered: dict[str, Any]) -> None:
    for name in ("worker", "worker-gpu"):
        assert int(rendered["services"][name]["shm_size"]) >= 256 << 20, name  # bytes


def test_the_commented_s3_store_works_once_uncommented(tmp_path: Path) -> None:
    lines = COMPOSE_FILE.read_text().splitlines()
    s3 = [i for i, line in enumerate(lines) if re.match(r"\s*#\s+(JANUS_STORE|AWS_)\w*:", line)]
    assert len(s3) >= 3, "the S3 alternative is no longer in the compose file"
    for i in s3:
        lines[i] = "  " + lines[i].split("#", 1)[1].strip()
    lines = [line for line in lines if line.strip() != "JANUS_STORE: /data/store"]
    edited = tmp_path / "docker-compose.yml"
    edited.write_text("\n".join(lines) + "\n")
    aws = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret"}
    done = compose_config({**SECRETS, **aws}, tmp_path, file=edited)
    assert done.returncode == 0, done.stderr
    for name, service in json.loads(done.stdout)["services"].items():
        env = service.get("environment", {})
        if "JANUS_REDIS_URL" not in env:
            continue
        assert env["JANUS_STORE"].startswith("s3://"), name
        assert {k for k in env if k.startswith("AWS_")} <= BOTOCORE
        for model, _ in MODELS:
            model.from_env(env)
    missing = compose_config({**SECRETS, "AWS_SECRET_ACCESS_KEY": "secret"}, tmp_path, file=edited)
    assert "required variable AWS_ACCESS_KEY_ID is missing a value" in missing.stderr
