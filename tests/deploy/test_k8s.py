"""deploy/k8s: every manifest is in the kustomization and valid against Kubernetes' own schemas
(offline, strict), and the objects fit together: probes, selectors, the autoscaler, the budget,
a worker's grace period, the pods' user and writable paths, the Secret's keys."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from adapters_store.settings import DataSettings
from learner.jobs.settings import JobSettings
from tests.deploy.manifests import (
    K8S,
    container,
    containers,
    env_file,
    example_secrets,
    final_stage,
    image_env,
    k8s_documents,
    k8s_files,
    k8s_object,
    kustomization,
    one,
)

VERSIONS = ("1.31.0", latest_version())
"""A Kubernetes still supported by the large providers, and the newest the package knows."""

IMAGES = {"janus-service": "service", "janus-worker": "worker"}
"""Container image (before kustomize names the registry) → deploy/<name>.Dockerfile."""


def _validate(doc: dict[str, Any], version: str, where: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(p) for p in err.path)
        pytest.fail(f"{where}: {path}: {err.message} (Kubernetes {version})")


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return set(selector["matchLabels"].items()) <= set(labels.items())


def test_kustomization_lists_every_manifest_and_nothing_else() -> None:
    listed = {K8S / name for name in kustomization()["resources"]}
    assert listed == set(k8s_files())


def test_everything_goes_to_the_janus_namespace() -> None:
    assert kustomization()["namespace"] == "janus"
    assert k8s_object("Namespace", "janus")
    for path, doc in k8s_documents():
        assert doc["metadata"].get("namespace", "janus") == "janus", path.name


@pytest.mark.parametrize("version", VERSIONS)
def test_every_document_is_valid_kubernetes(version: str) -> None:
    for path, doc in k8s_documents():
        _validate(doc, version, f"{path.name} {doc['kind']}/{doc['metadata']['name']}")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_kustomize_build_is_valid_kubernetes(tmp_path: Path) -> None:
    build = tmp_path / "k8s"
    shutil.copytree(K8S, build)
    (build / "secrets.env").write_text("".join(f"{k}={v}\n" for k, v in example_secrets().items()))
    done = subprocess.run(
        ["kubectl", "kustomize", str(build)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    for doc in docs:
        assert doc["metadata"].get("namespace", "janus") == "janus"
        _validate(doc, VERSIONS[-1], f"kustomize output {doc['kind']}/{doc['metadata']['name']}")
    (secret,) = [doc for doc in docs if doc["kind"] == "Secret"]
    assert secret["metadata"]["name"].startswith("janus-secrets-")  # hashed: a change restarts
    assert set(secret["data"]) == set(example_secrets())
    names = {i["name"]: i["newName"] for i in kustomization()["images"]}
    pods = [doc for doc in docs if "template" in doc.get("spec", {})]
    images = {c["image"] for pod in pods for c in pod["spec"]["template"]["spec"]["containers"]}
    assert {names[i] for i in IMAGES} <= {image.rpartition(":")[0] for image in images}


def test_the_service_probes_are_livez_and_readyz_on_the_container_port() -> None:
    service = container("Deployment/janus-service").spec
    ports = {p["name"]: p["containerPort"] for p in service["ports"]}
    paths = {
        probe: service[probe]["httpGet"]["path"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert paths == {
        "startupProbe": "/livez",
        "livenessProbe": "/livez",
        "readinessProbe": "/readyz",
    }
    for probe in paths:
        port = service[probe]["httpGet"]["port"]
        assert port in ports or port in ports.values(), (
            f"{probe} port {port} is not the container's"
        )


def test_the_service_autoscaler_and_budget_select_the_service_pods() -> None:
    deployment = k8s_object("Deployment", "janus-service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _matches(deployment["spec"]["selector"], labels)
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"

    service = k8s_object("Service", "janus")
    assert set(service["spec"]["selector"].items()) <= set(labels.items())
    (port,) = service["spec"]["ports"]
    names = {p["name"] for p in container("Deployment/janus-service").spec["ports"]}
    assert port["port"] == 80 and port["targetPort"] in names

    hpa = k8s_object("HorizontalPodAutoscaler", "janus-service")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        "janus-service",
    )
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    # the autoscaler's utilisation is a share of the CPU request: there must be one
    assert container("Deployment/janus-service").spec["resources"]["requests"]["cpu"]

    pdb = k8s_object("PodDisruptionBudget", "janus-service")
    assert _matches(pdb["spec"]["selector"], labels)
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a drain could never proceed"
    for other in ("Deployment/janus-worker", "Job/janus-init", "StatefulSet/redis"):
        other_labels = container(other).pod_labels
        assert not _matches(pdb["spec"]["selector"], other_labels), f"the budget counts {other}"


def test_a_stopped_worker_has_time_to_end_its_job() -> None:
    worker = container("Deployment/janus-worker")
    limit = JobSettings.from_env(worker.env).job_time_limit_s
    grace = worker.pod["terminationGracePeriodSeconds"]
    assert grace > limit, (
        f"terminationGracePeriodSeconds {grace} ≤ JANUS_JOB_TIME_LIMIT_S {limit:g}"
    )


def test_janus_pods_run_as_the_images_user_and_can_write_where_they_must() -> None:
    found = [c for c in containers() if c.spec["image"] in IMAGES]
    assert {c.owner for c in found} == {
        "Deployment/janus-service",
        "Deployment/janus-worker",
        "Job/janus-init",
    }
    for c in found:
        image = IMAGES[c.spec["image"]]
        uid, _, gid = one(final_stage(image), "USER").text.partition(":")
        pod = c.pod["securityContext"]
        assert pod["runAsNonRoot"] is True, c.owner
        assert (str(pod["runAsUser"]), str(pod["runAsGroup"]), str(pod["fsGroup"])) == (
            uid,
            gid,
            gid,
        )
        assert c.spec["securityContext"]["readOnlyRootFilesystem"] is True
        # a read-only root: the data dir, temporary files and HOME (BentoML, caches) are volumes
        writable = {Path(m["mountPath"]) for m in c.spec["volumeMounts"]}
        env = {**image_env(image), **c.env}
        needed = {DataSettings.from_env(env).data_dir, Path("/tmp"), Path(image_env(image)["HOME"])}
        assert needed <= writable, f"{c.owner}: {needed - writable} is read-only"


def test_every_config_and_secret_reference_resolves() -> None:
    keys = set(env_file(K8S / "secrets.env.example"))
    generated = {g["name"] for g in kustomization()["secretGenerator"]}
    configmaps = {
        doc["metadata"]["name"] for _, doc in k8s_documents() if doc["kind"] == "ConfigMap"
    }
    for c in containers():
        for source in c.spec.get("envFrom", []):
            if "secretRef" in source:
                assert source["secretRef"]["name"] in generated, c.owner
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in configmaps, c.owner
        for var in c.spec.get("env", []):
            if "valueFrom" in var:
                ref = var["valueFrom"]["secretKeyRef"]
                assert ref["name"] in generated and ref["key"] in keys, f"{c.owner}: {var['name']}"


def test_workers_have_shared_memory_for_the_image_readers() -> None:
    worker = container("Deployment/janus-worker")
    (mount,) = [m for m in worker.spec["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    (volume,) = [v for v in worker.pod["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"]["medium"] == "Memory"
