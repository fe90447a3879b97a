"""Against a real `bentoml serve` (2 workers), a real Celery worker and a real Redis.

learn → classify → learn → every worker swaps → rollback → classify answers with the old version;
bad requests leave every worker up; and a swap under load: versions are activated every few
seconds while clients keep classifying, no request fails, and every answer comes from a version
that was serving during that request.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from learner.data import LabeledBatch
from learner.jobs.redis_embedded import EmbeddedRedis
from tests.conftest import TINY_BACKBONES
from tests.jobs.conftest import JobEnv, Worker, make_job_env, start_worker
from tests.service.conftest import ADMIN, png
from tests.service.stack import Server, archive, start_server

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(330)]

TRAIN = {"epochs": 1, "num_threads": 1, "design_samples": 64}
LEARN = {
    "backbone": TINY_BACKBONES["convnet"].model_dump(mode="json"),
    "lora": {"rank": 4},
    "train": TRAIN,
}


@dataclass
class Stack:
    jobs: JobEnv
    worker: Worker
    server: Server
    digits: LabeledBatch
    notes: dict[str, Any]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis, digits: LabeledBatch
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("service-stack")
    jobs = make_job_env(root, redis_server.url, "janus-service-test")
    worker = start_worker(jobs.env, root / "worker.log")
    server = start_server(jobs.env, root / "bentoml.log", ADMIN)
    stack = Stack(jobs, worker, server, digits, {})
    try:
        worker.wait_ready(jobs.app, timeout=120)
        server.wait_live()
        yield stack
    finally:
        stack.server.stop()  # a test may have restarted it: stop the one running now
        server.stop()
        worker.stop()
        jobs.app.close()


def _image(digits: LabeledBatch, label: int, n: int = 0) -> bytes:
    return png(digits.images[int(np.nonzero(digits.labels == label)[0][n]), ..., 0])


def _classify(server: Server, digits: LabeledBatch, label: int) -> dict[str, Any]:
    r = server.post("/classify", files=[("images", ("d.png", _image(digits, label), "image/png"))])
    assert r.status_code == 200, r.text
    return dict(r.json())


def _pointer_time(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(entry["time"]).timestamp()


def test_learn_classify_swap_rollback(stack: Stack) -> None:
    server, digits = stack.server, stack.digits
    assert server.get("/readyz").status_code == 503  # empty store: nothing to serve yet

    # learn a first task from an uploaded archive
    folder = stack.jobs.dataset(digits, "upload01", ["digit0", "digit1"])
    r = server.post(
        "/admin/learn",
        files={"dataset": ("d.tar.gz", archive(folder), "application/gzip")},
        data={"request": json.dumps(LEARN)},
        headers=server.admin,
    )
    assert r.status_code == 202, r.text
    job = server.wait_job(r.json()["job_id"])
    assert job["state"] == "succeeded", job
    assert job["version"] == "v0001"
    server.wait_all_serving("v0001")
    assert server.get("/readyz").status_code == 200
    first = _classify(server, digits, 0)
    assert first["version"] == "v0001"
    assert {p["label"] for p in first["results"][0]["predictions"]} == {"digit0", "digit1"}

    # learn a second task from a dataset path; the job activates and announces it
    folder = stack.jobs.dataset(digits, "path23", ["digit2", "digit3"])
    r = server.post("/admin/learn", json={**LEARN, "dataset": str(folder)}, headers=server.admin)
    assert r.status_code == 202, r.text
    job = server.wait_job(r.json()["job_id"])
    assert job["state"] == "succeeded" and job["version"] == "v0002", job
    seen = server.wait_all_serving("v0002")
    moved = _pointer_time(server.get("/admin/history", headers=server.admin).json()[-1])
    stack.notes["swap_after_learn_s"] = seen - moved
    second = _classify(server, digits, 2)
    assert second["version"] == "v0002"
    assert len(second["results"][0]["predictions"]) == 4

    # roll back: every worker answers with the old version again
    r = server.post("/admin/rollback", json={"reason": "test"}, headers=server.admin)
    assert r.status_code == 200, r.text
    assert r.json()["to"] == "v0001"
    server.wait_all_serving("v0001")
    for _ in range(4):  # several connections: both workers
        assert _classify(server, digits, 1)["version"] == "v0001"
    versions = server.get("/admin/versions", headers=server.admin).json()
    assert [(v["id"], v["serving"]) for v in versions] == [("v0001", True), ("v0002", False)]


def test_bad_requests_leave_workers_up(stack: Stack) -> None:
    server = stack.server
    before = server.versions()
    assert len(before) == 2
    bad = [
        server.post("/classify", content=b"x" * (1 << 20) + b"x"),  # over JANUS_MAX_BODY_BYTES
        server.post("/classify", files=[("images", ("a.png", b"\x89PNG\r\n\x1a\nbroken"))]),
        server.post("/classify", content=b"{oops", headers={"content-type": "application/json"}),
        server.post("/classify", files=[("images", ("a.txt", b"plain text"))]),
        server.get("/admin/versions"),
        server.get("/admin/versions", headers={"Authorization": "Bearer not-the-token-at-all"}),
    ]
    assert [r.status_code for r in bad] == [413, 400, 400, 415, 401, 403]
    assert server.versions() == before  # the same worker processes, still serving
    assert _classify(server, stack.digits, 0)["version"] == before[next(iter(before))]


def _raw_request(server: Server, head: bytes) -> tuple[bytes, float]:
    """Sends only a request's head on a raw socket: (the answer's first bytes, seconds to it)."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        start = time.perf_counter()
        sock.sendall(head)
        answer = sock.recv(65536)
        return answer, time.perf_counter() - start


def _ensure_two_versions(stack: Stack) -> None:
    """Two versions, the second serving (what the module's first test leaves), so that a chaos
    test also runs alone (`make chaos`)."""
    server = stack.server
    have = len(server.get("/admin/versions", headers=server.admin).json())
    for i in range(have, 2):
        classes = [f"digit{4 + 2 * i}", f"digit{5 + 2 * i}"]
        folder = stack.jobs.dataset(stack.digits, f"chaos{i}", classes)
        r = server.post(
            "/admin/learn", json={**LEARN, "dataset": str(folder)}, headers=server.admin
        )
        assert r.status_code == 202, r.text
        job = server.wait_job(r.json()["job_id"])
        assert job["state"] == "succeeded", job
        server.wait_all_serving(job["version"])


@pytest.mark.chaos
def test_an_unauthenticated_admin_request_is_refused_before_its_body(stack: Stack) -> None:
    """The heads announce 512 MiB, or a chunked body, and no body follows: the answers must come
    at once, from the heads alone."""
    server = stack.server
    host = server.url.split("//")[1]
    announced = 512 << 20
    heads = [
        f"POST /admin/versions/v0001/activate HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {announced}\r\n\r\n",
        f"POST /admin/learn HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; "
        "boundary=x\r\nTransfer-Encoding: chunked\r\n"
        "Authorization: Bearer wrong-token-0123456789\r\n\r\n",
    ]
    for head, status in zip(heads, (b" 401 ", b" 403 "), strict=True):
        answer, seconds = _raw_request(server, head.encode())
        line = answer.split(b"\r\n")[0]
        print(f"\nunauthenticated admin request: {line.decode()} after {1000 * seconds:.1f} ms")
        assert status in line and seconds < 1.0
    public = server.get("/readyz").json()
    assert set(public) <= {"ready", "version", "engine"}  # no pid, pointer or error for anyone
    assert "pid" in server.get("/readyz", headers=server.admin).json()


def _tree_rss(pid: int) -> int:
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):  # a process that ended meanwhile
            total += p.memory_info().rss
    return total


@pytest.mark.chaos
def test_requests_to_made_up_paths_add_no_metric_series(stack: Stack) -> None:
    """Anyone may send any path: the metrics must not grow a series per path (a label per path
    would grow every worker's metric files and every scrape without bound)."""
    server = stack.server

    def samples() -> int:
        text = server.get("/metrics").text
        return sum(1 for line in text.splitlines() if line and not line.startswith("#"))

    server.get("/livez")
    before = samples()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for i in range(100):
            assert client.get(f"/made-up/{i:04d}").status_code == 404
            assert client.get(f"/admin/jobs/{i:032x}").status_code == 401
    added = samples() - before
    print(f"\n200 requests to made-up paths added {added} metric samples")
    assert added < 50, added


@pytest.mark.chaos
def test_decode_budget_attacks_leave_memory_and_latency_bounded(stack: Stack) -> None:
    """8 clients send requests that fill the decode budget (two 4.9 KB PNGs of 6300 × 6300
    1-bit pixels each, 79 M pixels to decode) while one client classifies normal images."""
    from PIL import Image

    _ensure_two_versions(stack)
    server = stack.server
    buf = io.BytesIO()
    Image.new("1", (6300, 6300)).save(buf, format="PNG")
    bomb = buf.getvalue()
    over = [("images", (f"{i}.png", bomb, "image/png")) for i in range(3)]
    r = server.post("/classify", files=over)  # three: over the budget, refused unread
    assert r.status_code == 413 and "JANUS_MAX_REQUEST_PIXELS" in r.json()["detail"]
    attack = [("images", (f"{i}.png", bomb, "image/png")) for i in range(2)]
    normal = _image(stack.digits, 0)
    baseline, peak = _tree_rss(server.process.pid), 0
    stop = threading.Event()
    statuses: list[int] = []
    latencies: list[float] = []

    def attacker() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            while not stop.is_set():
                statuses.append(client.post("/classify", files=attack).status_code)

    def user() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            while not stop.is_set():
                t0 = time.perf_counter()
                r = client.post("/classify", files=[("images", ("d.png", normal, "image/png"))])
                latencies.append(time.perf_counter() - t0)
                assert r.status_code in (200, 503), r.text

    alone = threading.Thread(target=user)  # the same stream without attackers, for reference
    alone.start()
    time.sleep(5)
    stop.set()
    alone.join(timeout=60)
    quiet_p99 = 1000 * float(np.percentile(latencies, 99))
    stop.clear()
    latencies.clear()
    threads = [threading.Thread(target=attacker) for _ in range(8)] + [
        threading.Thread(target=user)
    ]
    for t in threads:
        t.start()
    end = time.monotonic() + 15
    while time.monotonic() < end:
        peak = max(peak, _tree_rss(server.process.pid))
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    growth = (peak - baseline) / (1 << 20)
    assert statuses and set(statuses) <= {200, 503} and latencies
    p50, p99 = (1000 * float(np.percentile(latencies, q)) for q in (50, 99))
    print(
        f"\n8 decode-budget attackers, 15 s: {len(statuses)} attacks "
        f"({statuses.count(200)} answered, {statuses.count(503)} told to retry), service RSS "
        f"growth {growth:.0f} MiB (peak {peak / (1 << 20):.0f} MiB); normal requests: "
        f"{len(latencies)}, p50 {p50:.0f} ms, p99 {p99:.0f} ms (p99 {quiet_p99:.0f} ms without "
        "attackers)"
    )
    assert growth < 1024, f"the service grew by {growth:.0f} MiB"
    assert server.versions()  # every worker still up


@dataclass
class Answer:
    start: float
    end: float
    status: int
    version: str | None


def _load(server: Server, image: bytes, stop: threading.Event, out: list[Answer]) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while not stop.is_set():
            start = time.time()
            try:
                r = client.post("/classify", files=[("images", ("d.png", image, "image/png"))])
                version = r.json().get("version") if r.status_code == 200 else None
                out.append(Answer(start, time.time(), r.status_code, version))
            except httpx.HTTPError as err:
                out.append(Answer(start, time.time(), 0, repr(err)))
            time.sleep(0.02)


def test_swap_under_load(stack: Stack, tmp_path: Path) -> None:
    server = stack.server
    server.wait_all_serving("v0001")
    answers: list[Answer] = []
    stop = threading.Event()
    image = _image(stack.digits, 3)
    clients = [
        threading.Thread(target=_load, args=(server, image, stop, answers)) for _ in range(3)
    ]
    # serving intervals: version, pointer moved, every worker serving the next one
    timeline: list[tuple[str, float]] = [("v0001", 0.0)]
    everyone: list[float] = []
    for c in clients:
        c.start()
    try:
        time.sleep(1.5)
        for target in ["v0002", "v0001", "v0002", "v0001"]:
            r = server.post(f"/admin/versions/{target}/activate", headers=server.admin)
            assert r.status_code == 200, r.text
            timeline.append((target, _pointer_time(r.json())))
            everyone.append(server.wait_all_serving(target, timeout=60, poll=0.05))
            time.sleep(2.0)
    finally:
        stop.set()
        for c in clients:
            c.join(60)
    failed = [a for a in answers if a.status != 200]
    assert not failed, failed[:5]
    assert len(answers) > 20
    # version i may answer from its pointer move until every worker serves version i + 1
    windows = [
        (version, moved, everyone[i] if i < len(everyone) else float("inf"))
        for i, (version, moved) in enumerate(timeline)
    ]
    for a in answers:
        assert any(v == a.version and a.end >= lo and a.start <= hi for v, lo, hi in windows), (
            a,
            windows,
        )
    swaps = [e - moved for e, (_, moved) in zip(everyone, timeline[1:], strict=True)]
    stack.notes.update(
        swap_under_load_s=swaps,
        requests=len(answers),
        versions_answered={v: sum(a.version == v for a in answers) for v in ("v0001", "v0002")},
    )
    assert max(swaps) < 30
    report = json.dumps(stack.notes, indent=2)
    print(f"\nswap timings: {report}")
    (Path(__file__).resolve().parents[2] / "runs").mkdir(exist_ok=True)
    (Path(__file__).resolve().parents[2] / "runs" / "service-swap.json").write_text(report)


def test_cli_through_url(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """`--url` commands print the local commands' tables by default and JSON with `--json`."""
    from service.cli import main

    server = stack.server
    remote = ["--url", server.url, "--token", ADMIN]
    if not server.get("/admin/versions", headers=server.admin).json():  # run alone (`-k cli`)
        folder = stack.jobs.dataset(stack.digits, "cli01", ["digit0", "digit1"])
        r = server.post(
            "/admin/learn", json={**LEARN, "dataset": str(folder)}, headers=server.admin
        )
        assert server.wait_job(r.json()["job_id"])["state"] == "succeeded"
    before = [v["id"] for v in server.get("/admin/versions", headers=server.admin).json()]
    new = f"v{len(before) + 1:04d}"

    folder = stack.jobs.dataset(stack.digits, "cli4", ["digit4"])
    learn = ["learn", str(folder), "--wait", "--epochs", "1"]
    learn += ["--set", "design_samples=64", "--set", "num_threads=1", *remote]
    assert main(learn) == 0
    fields = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines())
    assert (fields["state"], fields["version"]) == ("succeeded", new), fields
    server.wait_all_serving(new)

    image = str(_png_file(stack, folder))
    assert main(["classify", "--url", server.url, "--top-k", "1", image]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"version {new}"
    assert main(["classify", "--url", server.url, "--json", "--top-k", "1", image]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == new

    assert main(["versions", *remote]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["ID", "PARENT", "CREATED"]
    assert [r.split()[0] for r in rows] == [*before, new] and rows[-1].endswith("serving")
    assert main(["versions", "--json", *remote]) == 0
    assert [v["id"] for v in json.loads(capsys.readouterr().out)] == [*before, new]
    assert main(["versions", "show", new, *remote]) == 0
    assert f"{new}  [serving]" in capsys.readouterr().out
    assert main(["versions", "show", new, "--json", *remote]) == 0
    assert json.loads(capsys.readouterr().out)["lineage"][-1] == "v0001"

    assert main(["rollback", "--reason", "cli", *remote]) == 0
    out = capsys.readouterr().out
    assert out.startswith("serving v") and f"(was {new})" in out
    assert main(["activate", new, "--json", *remote]) == 0
    assert json.loads(capsys.readouterr().out)["to"] == new
    assert main(["history", *remote]) == 0
    last = capsys.readouterr().out.splitlines()[-2]
    assert last.split()[2:4] == ["rollback", new] and last.rstrip().endswith("cli")
    assert main(["history", "--json", *remote]) == 0
    assert json.loads(capsys.readouterr().out)[-2]["reason"] == "cli"

    assert main(["jobs", *remote]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:2] == ["JOB", "STATE"] and new in rows[0]
    assert main(["jobs", "--json", *remote]) == 0
    jobs = json.loads(capsys.readouterr().out)
    assert jobs[0]["version"] == new and all(j["state"] == "succeeded" for j in jobs)
    assert main(["cancel", jobs[0]["job_id"], *remote]) == 1
    assert "already succeeded" in capsys.readouterr().err
    assert main(["activate", "v0099", *remote]) == 1  # the service's 404, as an error
    assert "v0099" in capsys.readouterr().err


def _png_file(stack: Stack, folder: Path) -> Path:
    return next((folder / "digit4").glob("*.png"))


def _answers(store: Any, version: str, images: list[bytes]) -> list[str]:
    """A version's top class for each image, from the model itself (no HTTP)."""
    from learner.data.images import model_input, pixels
    from service.runtime import load_version

    model = load_version(store, version)
    x = model_input([pixels(b, model.size, name="test") for b in images])
    return [model.class_names[int(i)] for i in np.argmax(model.logits(x), axis=1)]


def _metric_sum(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_pinned_requests_and_shadow_counts_across_workers(stack: Stack) -> None:
    """Both workers: a pinned request answers with the pinned version while another serves, and
    the shadow's counts in Redis agree with what the two versions answer."""
    import redis

    from adapters_store import open_store
    from service.shadow import clear_counts, read_counts

    _ensure_two_versions(stack)
    server, store = stack.server, open_store(stack.jobs.settings.store_uri)
    serving = store.serving()
    pinned = next(v for v in reversed(store.version_ids()) if v != serving)
    assert set(store.get(pinned).classes) != set(store.get(str(serving)).classes)
    pool = [_image(stack.digits, label, n) for label in (0, 1, 2, 3) for n in range(3)]
    theirs, ours = _answers(store, pinned, pool), _answers(store, str(serving), pool)
    agree = next(b for b, t, o in zip(pool, theirs, ours, strict=True) if t == o)
    differ = next(b for b, t, o in zip(pool, theirs, ours, strict=True) if t != o)

    for _ in range(6):  # several connections: both workers load the pinned version
        r = server.post(
            "/classify", params={"version": pinned}, files=[("images", ("a.png", differ))]
        )
        assert r.status_code == 200 and r.json()["version"] == pinned, r.text
        top = r.json()["results"][0]["predictions"][0]["label"]
        assert top == _answers(store, pinned, [differ])[0]
    assert _classify(server, stack.digits, 0)["version"] == serving  # serving did not change

    client = redis.Redis.from_url(stack.jobs.env["JANUS_REDIS_URL"])
    clear_counts(client, pinned)
    r = server.client_put("/admin/shadow", {"version": pinned, "fraction": 1.0})
    assert r.status_code == 200, r.text
    time.sleep(2.5)  # every worker's hot-swap loop reads refs/shadow (JANUS_POLL_S=1)
    before = server.get("/metrics").text
    sent = {"agree": 0, "differ": 0}
    for i in range(16):
        kind = "agree" if i % 2 == 0 else "differ"
        image = agree if kind == "agree" else differ
        r = server.post("/classify", files=[("images", ("x.png", image))])
        assert r.status_code == 200 and r.json()["version"] == serving, r.text
        sent[kind] += 1
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = server.get("/metrics").text
        done = sum(
            _metric_sum(after, name, version=pinned) - _metric_sum(before, name, version=pinned)
            for name in ("janus_shadow_images_total", "janus_shadow_skipped_total")
        )
        if done >= 16:
            break
        time.sleep(0.2)
    assert done == 16  # every image was mirrored or counted as skipped
    counts = read_counts(client, pinned).get(str(serving))
    assert counts is not None and counts["images"] >= 1
    a_class, d_class = _answers(store, str(serving), [agree, differ])
    per_class = counts["per_class"]
    if a_class in per_class:  # every mirrored copy of `agree` agreed
        assert per_class[a_class]["agreed"] == per_class[a_class]["images"] <= sent["agree"]
    if d_class in per_class and d_class != a_class:  # and no copy of `differ` did
        assert per_class[d_class]["agreed"] == 0 < per_class[d_class]["images"] <= 8
    mirrored = _metric_sum(after, "janus_shadow_images_total", version=pinned) - _metric_sum(
        before, "janus_shadow_images_total", version=pinned
    )
    assert counts["images"] == mirrored  # Redis and Prometheus count the same images
    shown = server.get(f"/admin/versions/{pinned}", headers=server.admin).json()
    assert shown["shadow"][str(serving)]["images"] == counts["images"]
    stack.notes["shadow"] = {"mirrored": mirrored, "skipped": 16 - mirrored}
    print(f"\nshadow of {pinned} beside {serving}: {stack.notes['shadow']}, counts {counts}")
    assert server.delete("/admin/shadow").status_code == 200
    client.close()


@pytest.mark.chaos
def test_a_corrupt_serving_version_and_a_restart_fall_back_to_the_previous_one(
    stack: Stack,
) -> None:
    """The serving version's ONNX file is damaged on disk and the service restarted: every
    worker serves the version that served before it, and the damaged one is quarantined."""
    from adapters_store import open_store

    _ensure_two_versions(stack)
    store = open_store(stack.jobs.settings.store_uri)
    current = store.serving()
    assert current is not None
    history = [v for e in reversed(store.history()) for v in (e.to, e.from_)]
    previous = next(v for v in history if v is not None and v != current)
    model = Path(stack.jobs.settings.store_uri) / "versions" / current / "model.onnx"
    good = model.read_bytes()
    model.write_bytes(good[: len(good) // 2])
    try:
        stack.server.stop()
        restarted = time.time()
        stack.server = start_server(stack.jobs.env, stack.jobs.root / "bentoml-2.log", ADMIN)
        stack.server.wait_live()
        seconds = stack.server.wait_all_serving(previous) - restarted
        detail = stack.server.get("/readyz", headers=stack.server.admin).json()
        print(
            f"\ncorrupt serving version {current}, service restarted: every worker serves "
            f"{previous} after {seconds:.1f} s (process start included)"
        )
        assert detail["fallback_for"] == current and current in store.quarantined()
    finally:
        model.write_bytes(good)
    store.activate(current, actor="test", reason="repaired", force=True)
    stack.server.wait_all_serving(current, timeout=60)
