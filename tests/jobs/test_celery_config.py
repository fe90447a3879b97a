"""The Celery app's settings for long jobs, the promotion gate and the activation policy (no
services)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters_store.manifest import Evaluation
from learner.jobs.app import create_app
from learner.jobs.client import LEARN_JOB, LearnRequest
from learner.jobs.evaluation import gate
from learner.jobs.learn import _activate_by_policy
from learner.jobs.settings import JobSettings


def test_app_is_configured_for_long_json_only_jobs(tmp_path: Path) -> None:
    settings = JobSettings.from_env(
        {
            "JANUS_DATA_DIR": str(tmp_path),
            "JANUS_JOB_TIME_LIMIT_S": "100",
            "JANUS_JOB_SOFT_TIME_LIMIT_S": "90",
            "JANUS_VISIBILITY_TIMEOUT_S": "120",
        }
    )
    app = create_app(settings, "redis://:pw@127.0.0.1:1/0")  # connects to nothing yet
    conf = app.conf
    assert conf.accept_content == ["json"] and conf.result_accept_content == ["json"]
    assert conf.task_serializer == conf.result_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and conf.worker_concurrency == 1
    assert conf.task_soft_time_limit == 90 and conf.task_time_limit == 100
    assert conf.broker_transport_options["visibility_timeout"] == 120
    assert conf.broker_transport_options["socket_timeout"] > 0  # a hung Redis is an error
    assert conf.redis_socket_timeout > 0 and conf.redis_socket_connect_timeout > 0
    assert conf.result_expires and conf.broker_url == conf.result_backend
    assert LEARN_JOB in app.tasks


def test_app_without_redis_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"JANUS_REDIS_URL.*janus worker"):
        create_app(JobSettings.from_env({"JANUS_DATA_DIR": str(tmp_path)}))


@pytest.mark.parametrize(
    ("new", "old", "among_old", "serving", "passed"),
    [
        (80.0, 85.0, 90.0, 95.0, True),  # exactly at every threshold
        (79.9, 85.0, 90.0, 95.0, False),  # new classes below
        (80.0, 84.9, 90.0, 95.0, False),  # lost 10.1 points, forgot only 5
        (80.0, 85.0, 89.9, 95.0, False),  # forgot 5.1 points
        (99.0, 99.0, 99.0, 95.0, True),  # gained on old classes
        (80.0, None, None, None, True),  # nothing serves: only the new classes count
    ],
)
def test_the_gate_needs_new_accuracy_and_bounds_the_old_drop_and_forgetting(
    new: float, old: float | None, among_old: float | None, serving: float | None, passed: bool
) -> None:
    verdict = gate("v0001", new, (old, among_old, serving), 80.0, 10.0, 5.0)
    assert verdict.passed is passed
    assert bool(verdict.reasons) is not passed
    assert (verdict.max_old_drop, verdict.max_forgetting) == (10.0, 5.0)


@pytest.mark.parametrize(
    ("activation", "passed", "expected"),
    [("auto", False, True), ("manual", True, False), ("gate", False, False), ("gate", True, True)],
)
def test_activation_policy(activation: str, passed: bool, expected: bool) -> None:
    request = LearnRequest.model_validate({"dataset": "/d", "activation": activation})
    verdict = gate(None, 90.0 if passed else 10.0, (None, None, None), 50.0, 10.0, 5.0)
    evaluation = Evaluation(against=None, gate=verdict)
    assert (evaluation.rejected is None) is passed
    assert _activate_by_policy(request, evaluation) is expected
