"""Safe promotion through a real worker: every candidate is evaluated against the serving version
on the evaluation sets, and the gate keeps one that forgot its old classes from serving."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters_store import InvalidManifest, Rejected, open_store
from learner.data import LabeledBatch
from learner.jobs.evaluation import evaluation_images
from learner.jobs.redis_embedded import EmbeddedRedis
from service.cli import main
from tests.jobs.conftest import JobEnv, running_worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def promotion_env(
    tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis
) -> Iterator[JobEnv]:
    """Its own store, queue and worker: what serves is this module's alone."""
    root = tmp_path_factory.mktemp("promotion")
    with running_worker(root, redis_server.url, "janus-promotion") as jobs:
        yield jobs


def test_a_job_that_forgets_old_classes_is_rejected_and_serving_does_not_change(
    promotion_env: JobEnv, digits: LabeledBatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = promotion_env
    store = open_store(env.settings.store_uri)
    first = env.run(
        env.request(env.dataset(digits, "p01", ["digit0", "digit1"], 100), parent="root")
    )
    assert first.state == "succeeded", first.error
    assert first.result and first.result["activated"] and first.result["rejected"] is None
    v1 = store.get(str(first.version))
    assert v1.evaluation and v1.evaluation.against is None and len(v1.evaluation.added) == 1
    kept = store.evalsets.info(v1.evaluation.added[0])
    assert kept.kind == "holdout" and kept.classes == {"digit0": 20, "digit1": 20}

    # destructive: sequential LoRA with a large step, three epochs, no protection of old classes
    data23 = env.dataset(digits, "p23", ["digit2", "digit3"], 100)
    bad = env.run(
        env.request(data23, method="seq-lora", train={"lr": 0.5, "epochs": 3}, reason="too hot")
    )
    assert bad.state == "succeeded", bad.error
    assert bad.result is not None and not bad.result["activated"]
    assert "old-class accuracy fell" in str(bad.result["rejected"]), bad.result
    assert store.serving() == v1.id  # serving did not change
    rejected = store.get(str(bad.version))
    assert rejected.rejected and rejected.evaluation and rejected.evaluation.gate
    ev = rejected.evaluation
    assert ev.against == v1.id and v1.evaluation.added[0] in ev.sets
    assert ev.old_drop is not None and ev.old_drop > ev.gate.max_old_drop == 10.0
    assert ev.forgetting is not None and ev.forgetting > ev.gate.max_forgetting == 5.0
    assert any("it forgot old classes" in reason for reason in ev.gate.reasons)
    assert ev.per_class["digit0"].serving_accuracy is not None
    assert ev.per_class["digit2"].serving_accuracy is None  # new: the serving version lacks it
    last = store.history()[-1]
    assert (last.action, last.to, last.from_) == ("reject", rejected.id, v1.id)
    assert "old-class accuracy fell" in last.reason
    main(["versions", "show", rejected.id, "--store", env.settings.store_uri])
    shown = capsys.readouterr().out
    assert "REJECTED: old-class accuracy fell" in shown and f"against {v1.id}" in shown
    with pytest.raises(Rejected, match="--force --reason"):
        store.activate(rejected.id, actor="test")
    with pytest.raises(InvalidManifest, match="needs a reason"):
        store.activate(rejected.id, actor="test", force=True)
    assert store.serving() == v1.id

    # sound: Janus-LoRA on the same classes is activated, within the allowed drop
    good = env.run(env.request(data23))
    assert good.state == "succeeded", good.error
    assert good.result and good.result["activated"] and good.result["rejected"] is None
    assert store.serving() == good.version
    v3 = store.get(str(good.version))
    assert v3.evaluation and v3.evaluation.gate and v3.evaluation.gate.passed
    assert v3.evaluation.old_drop is not None and v3.evaluation.old_drop <= 10.0
    assert v3.evaluation.forgetting is not None and v3.evaluation.forgetting <= 5.0
    # the figures are what the two versions answer: recount the old classes' images by hand
    images, _ = evaluation_images(store, [v1.id], [], set(v1.classes))
    assert v3.evaluation.per_class["digit0"].images + v3.evaluation.per_class[
        "digit1"
    ].images == len(images)

    # a person may still serve the rejected version, with a reason the audit log keeps
    entry = store.activate(rejected.id, actor="test", reason="accepting the drop", force=True)
    assert entry.forced and store.serving() == rejected.id
    assert store.history()[-1].reason == "accepting the drop"
