"""The scale-out tier: one Redis, the store on an S3 server, two learn workers with data
directories of their own (as on two hosts) and two service replicas (`bentoml serve` processes on
ports of their own), all configured only through `JANUS_*` and `AWS_*` variables.

Learning through one replica makes every replica serve the new version within 2 s of its
activation; jobs submitted at once through both replicas each publish one version, one per worker;
the busy worker killed mid-job has its job finished by the other; `janus verify` is clean at the
end. The replicas run with torch, timm, matplotlib and onnx made unimportable, as in the serving
image. Each process reaches S3 on a port of its own, so what each asks of the store is counted:
the figures (swap latency, bytes per swap, pointer reads per minute, jobs per worker) are printed.

Replica A runs the default watch (announcements, with a poll every `JANUS_SAFETY_POLL_S` = 30 s
as the safety net); replica B polls every second as before (`JANUS_SAFETY_POLL_S=1`), the
reference for the pointer reads.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import s3fs
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from learner.data import LabeledBatch, write_class_folders
from learner.jobs.app import create_app
from learner.jobs.client import attempts_key, redis_client, wait
from learner.jobs.redis_embedded import EmbeddedRedis, start_embedded
from learner.jobs.settings import JobSettings
from tests.jobs.conftest import TIMINGS, Worker, start_worker, wait_training
from tests.scale.s3counting import CountingS3
from tests.service.conftest import ADMIN
from tests.service.stack import REPO, Server, archive, start_server
from tests.service.test_integration import LEARN

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

BUCKET = "janus-scale"
STORE = f"s3://{BUCKET}/store"
NO_LEARNER = f'''"""The serving image's packages only: the others are not installed."""
import sys

sys.path.insert(0, {str(REPO)!r})
from tests.deploy.slim_check import hide

hide()
sys.path.remove({str(REPO)!r})
'''


@dataclass
class Tier:
    s3: CountingS3
    redis: EmbeddedRedis
    app: Celery
    workers: dict[str, Worker]
    replicas: dict[str, Server]
    root: Path
    digits: LabeledBatch
    figures: dict[str, Any] = field(default_factory=dict)

    def dataset(self, name: str, classes: list[str], per_class: int = 40) -> bytes:
        batch = self.digits.select_classes(classes)
        keep = [
            i for c in range(len(classes)) for i in (batch.labels == c).nonzero()[0][:per_class]
        ]
        return archive(write_class_folders(batch.subset(keep), self.root / "datasets" / name))

    def learn(self, replica: str, data: bytes, **fields: Any) -> str:
        """Queues a learn job through a replica (the archive is staged in the store)."""
        server = self.replicas[replica]
        body = {**LEARN, **fields, "train": {**LEARN["train"], **fields.get("train", {})}}
        r = server.post(
            "/admin/learn",
            files={"dataset": ("d.tar.gz", data, "application/gzip")},
            data={"request": json.dumps(body)},
            headers=server.admin,
        )
        assert r.status_code == 202, r.text
        return str(r.json()["job_id"])

    def published_by(self, version: str) -> list[str]:
        """The workers that wrote files of `version` to the store."""
        prefix = f"store/versions/{version}/"
        return [w for w in self.workers if self.s3.tallies[w].count("PUT", prefix)[0]]

    def activated_at(self, version: str) -> float:
        history = self.replicas["a"].get(
            "/admin/history", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        entry = [e for e in history.json() if e["to"] == version and e["action"] != "reject"][-1]
        return datetime.fromisoformat(entry["time"]).timestamp()

    def swap_lags(self, version: str) -> dict[str, float]:
        """Seconds from the pointer's move to `version` until each replica serves it."""
        seen = {
            name: server.wait_all_serving(version, poll=0.05)
            for name, server in self.replicas.items()
        }
        moved = self.activated_at(version)
        return {name: round(t - moved, 3) for name, t in seen.items()}


def _no_learner_path(root: Path) -> str:
    folder = root / "serving-image"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(NO_LEARNER)
    return str(folder)


@pytest.fixture(scope="module")
def tier(tmp_path_factory: pytest.TempPathFactory, digits: LabeledBatch) -> Iterator[Tier]:
    root = tmp_path_factory.mktemp("scale-out")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    s3 = CountingS3(BUCKET, ["test", "worker-1", "worker-2", "a", "b"])
    redis = start_embedded(root / "redis")
    common = {"JANUS_STORE": STORE, "JANUS_REDIS_URL": redis.url}
    s3fs.S3FileSystem(
        skip_instance_cache=True,
        endpoint_url=s3.env("test")["AWS_ENDPOINT_URL"],
        key="testing",
        secret="testing",
    ).mkdir(BUCKET)
    workers: dict[str, Worker] = {}
    replicas: dict[str, Server] = {}
    settings = JobSettings.from_env({**common, **TIMINGS, "JANUS_DATA_DIR": str(root / "client")})
    app = create_app(settings)
    no_learner = _no_learner_path(root)
    try:
        for name in ("worker-1", "worker-2"):
            env = {**common, **TIMINGS, **s3.env(name), "JANUS_DATA_DIR": str(root / name)}
            workers[name] = start_worker(env, root / f"{name}.log")
        for name, extra in (("a", {}), ("b", {"JANUS_SAFETY_POLL_S": "1"})):
            env = {
                **common,
                **s3.env(name),
                **extra,
                "JANUS_DATA_DIR": str(root / f"replica-{name}"),
                "PYTHONPATH": no_learner,
            }
            replicas[name] = start_server(env, root / f"replica-{name}.log", ADMIN, workers=1)
        for worker in workers.values():
            worker.wait_ready(app, timeout=120)
        for server in replicas.values():
            server.wait_live()
        tier = Tier(s3, redis, app, workers, replicas, root, digits)
        yield tier
        print(f"\nscale-out tier figures: {json.dumps(tier.figures, sort_keys=True)}")
    finally:
        for server in replicas.values():
            server.stop()
        for worker in workers.values():
            worker.stop()
        app.close()
        redis.stop()
        s3.stop()


def _store_fs(tier: Tier) -> s3fs.S3FileSystem:
    env = tier.s3.env("test")
    return s3fs.S3FileSystem(
        skip_instance_cache=True,
        endpoint_url=env["AWS_ENDPOINT_URL"],
        key="testing",
        secret="testing",
    )


def test_learning_through_one_replica_reaches_every_replica_within_2_s(tier: Tier) -> None:
    first = tier.replicas["a"].wait_job(
        tier.learn("a", tier.dataset("t1", ["digit0", "digit1"]), parent="root")
    )
    assert first["state"] == "succeeded" and first["version"] == "v0001", first
    lags = {"v0001": tier.swap_lags("v0001")}

    # both replicas now serve and are settled: A only hears the announcement, B polls every second
    for server in tier.replicas.values():
        subscribed = _subscribed(server.get("/metrics").text)
        assert subscribed and all(v == 1.0 for v in subscribed), subscribed
    reads_before = {
        n: tier.s3.tallies[n].count("GET", "store/versions/v0002/") for n in tier.replicas
    }
    second = tier.replicas["b"].wait_job(tier.learn("b", tier.dataset("t2", ["digit2", "digit3"])))
    assert second["state"] == "succeeded" and second["version"] == "v0002", second
    lags["v0002"] = tier.swap_lags("v0002")
    for lag in lags.values():
        assert all(0 <= s <= 2.0 for s in lag.values()), lags
    # the replicas served without torch (the workers, which trained, have it mapped)
    assert not any(_maps_torch(pid) for r in tier.replicas.values() for pid in _group(r.process))
    assert any(_maps_torch(pid) for w in tier.workers.values() for pid in _group(w.process))
    for server in tier.replicas.values():
        answer = server.post("/classify", files=[("images", ("d.png", _png(tier, 2), "image/png"))])
        assert answer.status_code == 200 and answer.json()["version"] == "v0002", answer.text

    # what a swap reads: the manifest and the ONNX model, not the version's other files
    fs = _store_fs(tier)
    sizes = {Path(p).name: int(fs.info(p)["size"]) for p in fs.ls(f"{BUCKET}/store/versions/v0002")}
    per_swap = {
        n: tier.s3.tallies[n].count("GET", "store/versions/v0002/")[1] - reads_before[n][1]
        for n in tier.replicas
    }
    needed = sizes["model.onnx"] + sizes["manifest.json"]
    for read in per_swap.values():
        assert needed <= read < sum(sizes.values()), (per_swap, sizes)

    # pointer reads while nothing changes, per replica and minute
    window = 15.0
    refs = {n: tier.s3.tallies[n].count("GET", "store/refs/")[0] for n in tier.replicas}
    time.sleep(window)
    per_minute = {
        n: round((tier.s3.tallies[n].count("GET", "store/refs/")[0] - refs[n]) * 60 / window, 1)
        for n in tier.replicas
    }
    assert per_minute["a"] <= 8 and per_minute["b"] >= 60, per_minute
    tier.figures.update(
        activation_to_serving_s=lags,
        swap_bytes={"version_files": sum(sizes.values()), "read_per_replica": per_swap},
        version_files=sizes,
        pointer_reads_per_minute={
            "a (announcements + 30 s poll)": per_minute["a"],
            "b (1 s poll)": per_minute["b"],
        },
    )


def test_jobs_submitted_at_once_through_both_replicas_each_publish_one_version(tier: Tier) -> None:
    data = {
        "a": tier.dataset("t3", ["digit4", "digit5"]),
        "b": tier.dataset("t4", ["digit6", "digit7"]),
    }
    ids: dict[str, str] = {}

    def submit(name: str) -> None:
        ids[name] = tier.learn(
            name, data[name], idempotency_key=f"concurrent-{name}", activation="manual"
        )

    threads = [threading.Thread(target=submit, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = {n: tier.replicas[n].wait_job(ids[n]) for n in ids}
    assert all(j["state"] == "succeeded" for j in done.values()), done
    versions = {n: j["version"] for n, j in done.items()}
    assert len(set(versions.values())) == 2, versions
    by = {n: tier.published_by(v) for n, v in versions.items()}
    assert all(len(w) == 1 for w in by.values()), by
    assert {w[0] for w in by.values()} == set(tier.workers), by  # one job per worker
    tier.figures["concurrent_jobs_by_worker"] = {versions[n]: by[n][0] for n in versions}


def test_the_busy_worker_killed_mid_job_has_its_job_finished_by_the_other(tier: Tier) -> None:
    data = tier.dataset("t5", ["digit8", "digit9"], per_class=100)
    job_id = tier.learn(
        "a", data, idempotency_key="killed", activation="manual", train={"epochs": 100}
    )
    running = wait_training(tier.app, job_id, timeout=90)
    assert running.state == "running", running
    active = tier.app.control.inspect(timeout=1).active() or {}
    busy = [
        name
        for name, worker in tier.workers.items()
        if any(task["id"] == job_id for task in active.get(worker.hostname, []))
    ]
    assert len(busy) == 1, active
    killed = time.monotonic()
    tier.workers[busy[0]].kill()
    done = wait(tier.app, job_id, timeout=180, poll_s=0.2)
    assert done.state == "succeeded", done.error
    (other,) = set(tier.workers) - set(busy)
    assert tier.published_by(str(done.version)) == [other]
    assert int(redis_client(tier.app).get(attempts_key(job_id)) or 0) == 2
    tier.figures["killed_job"] = {
        "killed": busy[0],
        "finished_by": other,
        "version": done.version,
        "published_after_kill_s": round(time.monotonic() - killed, 1),
    }
    jobs = {w: sum(1 for v in _versions(tier) if tier.published_by(v) == [w]) for w in tier.workers}
    tier.figures["versions_published_per_worker"] = jobs


def test_the_store_verifies_clean_at_the_end(tier: Tier) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JANUS_", "AWS_"))}
    env = {**clean, **tier.s3.env("test"), "JANUS_STORE": STORE}
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "verify", "--json"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["checked"] == _versions(tier), report


def _versions(tier: Tier) -> list[str]:
    return sorted(Path(p).name for p in _store_fs(tier).ls(f"{BUCKET}/store/versions"))


def _png(tier: Tier, label: int) -> bytes:
    from tests.service.conftest import png

    index = int((tier.digits.labels == label).nonzero()[0][0])
    return png(tier.digits.images[index, ..., 0])


def _subscribed(metrics: str) -> list[float]:
    """`janus_announcements_subscribed` of each worker process of a replica."""
    return [
        sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "janus_announcements_subscribed"
        for sample in family.samples
    ]


def _group(process: subprocess.Popen[bytes]) -> list[int]:
    """The processes of `process`'s process group (a replica or a worker, with its children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == process.pid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _maps_torch(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
