"""Learn jobs through a real Redis and a real worker process (DESIGN.md §6)."""

from __future__ import annotations

import json
import pathlib
import time

import pytest

from adapters_store import open_store
from adapters_store.manifest import ONNX
from learner.data import LabeledBatch
from learner.jobs.client import (
    LEARN_JOB,
    SERVING_CHANNEL,
    attempts_key,
    cancel,
    redis_client,
    status,
    submit,
    wait,
)
from learner.jobs.versioning import load_state
from tests.conftest import TINY_BACKBONES
from tests.jobs.conftest import JobEnv

pytestmark = pytest.mark.integration


def _messages(pubsub, count: int, timeout: float = 10.0) -> list[dict]:  # type: ignore[no-untyped-def]
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        msg = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if msg is not None:
            out.append(json.loads(msg["data"]))
    return out


def test_two_tasks_give_lineage_and_announce(job_env: JobEnv, digits: LabeledBatch) -> None:
    pubsub = redis_client(job_env.app).pubsub()
    pubsub.subscribe(SERVING_CHANNEL)
    pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    # a new lineage from the root: the gate would refuse it against whatever serves (it knows
    # none of those classes), so these two jobs serve without one
    first = job_env.run(
        job_env.request(
            job_env.dataset(digits, "t1", ["digit0", "digit1"]), parent="root", activation="auto"
        )
    )
    assert first.state == "succeeded", first.error
    second = job_env.run(
        job_env.request(job_env.dataset(digits, "t2", ["digit2", "digit3"]), activation="auto")
    )
    assert second.state == "succeeded", second.error
    assert first.version and second.version

    store = open_store(job_env.settings.store_uri)
    assert [m.id for m in store.lineage(second.version)] == [second.version, first.version]
    v2 = store.get(second.version)
    assert v2.new_classes == ["digit2", "digit3"] and v2.job_id == second.job_id
    assert 0.0 <= v2.metrics["holdout_accuracy_new"] <= 100.0 and ONNX in v2.files
    assert store.serving() == second.version
    assert len(load_state(store, second.version).adapters) == 2
    assert second.result and second.result["parent"] == first.version

    announced = _messages(pubsub, 2)
    pubsub.close()
    assert [(m["version"], m["previous"]) for m in announced[-2:]] == [
        (first.version, announced[-2]["previous"]),
        (second.version, first.version),
    ]
    assert announced[-1]["job_id"] == second.job_id


def test_same_idempotency_key_twice_gives_one_version(
    job_env: JobEnv, digits: LabeledBatch
) -> None:
    data = job_env.dataset(digits, "same", ["digit4", "digit5"])
    request = job_env.request(
        data, parent="root", idempotency_key="same-key-1", activation="manual"
    )
    ids = [submit(job_env.app, request), submit(job_env.app, request)]  # queued together
    done = [wait(job_env.app, job_id, timeout=120, poll_s=0.2) for job_id in ids]
    assert [d.state for d in done] == ["succeeded", "succeeded"], [d.error for d in done]
    assert done[0].version == done[1].version
    assert done[1].result and done[1].result["reused"] is True
    store = open_store(job_env.settings.store_uri)
    assert [m.id for m in store.versions() if m.idempotency_key == "same-key-1"] == [
        done[0].version
    ]


def test_poison_job_fails_once_with_its_reason(job_env: JobEnv, digits: LabeledBatch) -> None:
    data = job_env.dataset(digits, "poison", ["digit6", "digit7"])
    (data / "digit7" / "broken.png").write_bytes(b"this is not an image")
    request = job_env.request(data, parent="root", idempotency_key="poison-1")
    job = job_env.run(request)
    assert job.state == "failed"
    assert job.error and "broken.png" in job.error and "not a recognised image" in job.error
    time.sleep(3 * job_env.settings.restore_interval_s + 1)  # a redelivery would show by now
    client = redis_client(job_env.app)
    assert int(client.get(attempts_key(job.job_id)) or 0) == 1
    assert status(job_env.app, job.job_id).state == "failed"
    assert client.llen(job_env.settings.queue) == 0 and client.hlen("unacked") == 0
    assert open_store(job_env.settings.store_uri).find_by_key("poison-1") is None


def test_known_class_fails_before_training(job_env: JobEnv, digits: LabeledBatch) -> None:
    first = job_env.run(job_env.request(job_env.dataset(digits, "k1", ["digit8"]), parent="root"))
    assert first.state == "succeeded", first.error
    again = job_env.run(
        job_env.request(job_env.dataset(digits, "k2", ["digit8", "digit9"]), parent=first.version)
    )
    assert again.state == "failed" and again.error
    assert "['digit8'] are already learned" in again.error and "k2" in again.error


def test_backbone_weights_outside_the_allowed_folders_fail_the_job(
    job_env: JobEnv, digits: LabeledBatch, tmp_path: pathlib.Path
) -> None:
    from learner.backbones import save_backbone_weights

    outside = save_backbone_weights(TINY_BACKBONES["convnet"], tmp_path / "w.safetensors")
    backbone = TINY_BACKBONES["convnet"].model_copy(
        update={"weights": "file", "path": str(outside)}
    )
    data = job_env.dataset(digits, "weights-outside", ["digit5", "digit6"])
    job = job_env.run(
        job_env.request(data, parent="root").model_copy(update={"backbone": backbone})
    )
    assert job.state == "failed" and job.error
    assert "outside the folders a learn job may read" in job.error and str(outside) in job.error


class _Touch:
    """Unpickling this creates a file: what a pickle payload could do to a worker."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (pathlib.Path.touch, (self.marker,))


def test_pickle_message_is_refused(job_env: JobEnv, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "unpickled"
    job_id = "pickle-attack-1"
    job_env.app.send_task(LEARN_JOB, args=(_Touch(marker),), task_id=job_id, serializer="pickle")
    log = job_env.root / "worker.log"
    deadline = time.monotonic() + 30
    while "untrusted content" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "Refusing to deserialize untrusted content of type pickle" in log.read_text()
    client = redis_client(job_env.app)
    assert client.llen(job_env.settings.queue) == 0 and client.hlen("unacked") == 0  # dropped
    assert not marker.exists()
    assert status(job_env.app, job_id).state == "unknown"  # never ran: no result, no record


def test_cancel_stops_a_running_job(job_env: JobEnv, digits: LabeledBatch) -> None:
    data = job_env.dataset(digits, "cancel", ["digit0", "digit9"], per_class=150)
    request = job_env.request(
        data, parent="root", idempotency_key="cancel-1", train={"epochs": 200}
    )
    job_id = submit(job_env.app, request)
    running = wait(
        job_env.app,
        job_id,
        timeout=60,
        poll_s=0.2,
        until=lambda s: bool(s.progress and s.progress.get("phase") == "train"),
    )
    assert running.state == "running", running
    cancel(job_env.app, job_id)
    final = wait(job_env.app, job_id, timeout=30, poll_s=0.2)
    assert final.state == "cancelled" and final.error and "cancelled" in final.error
    assert open_store(job_env.settings.store_uri).find_by_key("cancel-1") is None


def test_a_job_running_past_the_visibility_timeout_is_delivered_once(
    job_env: JobEnv, digits: LabeledBatch
) -> None:
    """Its heartbeat keeps its message's delivery time fresh: no worker's restore loop hands it
    out again while it runs (visibility 10 s here), and it is acknowledged once."""
    assert job_env.settings.visibility_timeout_s == 10
    data = job_env.dataset(digits, "long-running", ["digit0", "digit9"], per_class=100)
    request = job_env.request(data, parent="root", train={"epochs": 150})
    started = time.monotonic()
    job = job_env.run(request, timeout=240)
    took = time.monotonic() - started
    assert job.state == "succeeded", job.error
    past = job_env.settings.visibility_timeout_s + 2 * job_env.settings.restore_interval_s
    assert took > past, f"the job took only {took:.0f} s"  # a restore would have come by then
    time.sleep(3 * job_env.settings.restore_interval_s + 1)  # a redelivery would show by now
    client = redis_client(job_env.app)
    assert int(client.get(attempts_key(job.job_id)) or 0) == 1
    assert client.hlen("unacked") == 0 and client.llen(job_env.settings.queue) == 0


def test_a_job_whose_message_cannot_be_sent_leaves_no_record(
    job_env: JobEnv, digits: LabeledBatch, monkeypatch
) -> None:
    """The record is written first (so a worker never runs a job without one); a failed send
    removes it, instead of a job shown `queued` for a week."""
    from kombu.exceptions import OperationalError

    from learner.jobs.client import JOBS_KEY, job_key

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OperationalError("the broker went away")

    monkeypatch.setattr(job_env.app, "send_task", refuse)
    data = job_env.dataset(digits, "unsent", ["digit1", "digit2"], per_class=10)
    with pytest.raises(OperationalError):
        submit(job_env.app, job_env.request(data, parent="root"), job_id="unsent-1")
    client = redis_client(job_env.app)
    assert not client.exists(job_key("unsent-1")) and client.zscore(JOBS_KEY, "unsent-1") is None
