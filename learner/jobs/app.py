"""The Celery app of learn jobs (DESIGN.md §6): Redis broker and results, JSON only, long jobs.

Long jobs need: late acknowledgement (a job is acknowledged when it ends, so a worker lost mid-job
means redelivery) and requeue when the worker process dies; one job fetched at a time; a short
visibility timeout that a running job's heartbeat keeps pushing back (`learner.jobs.learn`: Redis
delivers again a job whose worker stopped beating, within minutes, and never one still running);
soft and hard time limits; result expiry; socket timeouts on every Redis connection, so a hung
Redis is an error, not a hang. Pickle and every other content type than JSON are refused.

Redis is one server or a master found through Sentinel (`learner.jobs.redis_url`); the app keeps
the `JANUS_REDIS_URL` form as `janus_redis_url`, from which `redis_client` makes its clients.

One training job at a time per worker: prefork with one child (the hard time limit needs a child
to kill). The parent never imports torch, so nothing CUDA exists before the fork; each child
imports it once after the fork, and starts the reader processes of its jobs' data itself.

    app = create_app(JobSettings.from_env())     # or `celery -A learner.jobs.app worker`
"""

from __future__ import annotations

from functools import cache
from multiprocessing import current_process
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from learner.jobs.client import LEARN_JOB, REDIS_TIMEOUTS
from learner.jobs.redis_embedded import EmbeddedRedis, current_url, ensure_embedded
from learner.jobs.redis_url import celery_connection
from learner.jobs.settings import JobSettings


def celery_config(settings: JobSettings, redis_url: str) -> dict[str, Any]:
    """Celery settings for `settings`, with broker and result backend at `redis_url` (a server,
    or a master through Sentinel: `learner.jobs.redis_url`)."""
    where = celery_connection(redis_url, REDIS_TIMEOUTS)
    return {
        "broker_url": where.url,
        "result_backend": where.url,
        "broker_use_ssl": where.use_ssl,
        "redis_backend_use_ssl": where.use_ssl,
        "result_backend_transport_options": where.transport_options,
        "janus_redis_url": redis_url,  # for `redis_client`: the broker URL may be kombu's form
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "task_track_started": True,
        "task_soft_time_limit": settings.job_soft_time_limit_s,
        "task_time_limit": settings.job_time_limit_s,
        "broker_transport_options": {
            "visibility_timeout": int(settings.visibility_timeout_s),
            "unacked_restore_interval": settings.restore_interval_s,
            "unacked_restore_throttle": 1,
            **REDIS_TIMEOUTS,
            **where.transport_options,
        },
        "broker_connection_timeout": REDIS_TIMEOUTS["socket_connect_timeout"],
        "redis_socket_timeout": REDIS_TIMEOUTS["socket_timeout"],
        "redis_socket_connect_timeout": REDIS_TIMEOUTS["socket_connect_timeout"],
        "result_expires": int(settings.result_expires_s),
        "result_extended": True,
        "task_default_queue": settings.queue,
        "broker_connection_retry_on_startup": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
    }


def _preload(**_: Any) -> None:
    """Each pool child imports torch and the trainer once, before its first job (CPU only), and
    may start the processes that read a job's images (`learner.loader`).

    The pool marks its children daemonic, and a daemonic process may not have children. The
    child is its worker's one training process, and torch's reader processes end by themselves
    when their parent is gone (they watch its pid), so a child killed at the hard time limit
    leaves none behind.
    """
    current_process()._config["daemon"] = False  # type: ignore[attr-defined]
    import learner.train  # noqa: F401


def resolve_redis(settings: JobSettings) -> tuple[str, EmbeddedRedis | None]:
    """`JANUS_REDIS_URL`, else the embedded Redis of the data dir (started if needed)."""
    if settings.redis_url:
        return settings.redis_url, None
    server = ensure_embedded(settings.data_dir)
    return server.url, server


def create_app(settings: JobSettings | None = None, redis_url: str | None = None) -> Celery:
    """A configured app with the `janus.learn` task; starts nothing.

    Without `redis_url`: `settings.redis_url`, else an embedded Redis already running for the
    data dir; `resolve_redis` is the way to start one.
    """
    from learner.jobs.learn import learn_job

    settings = settings or JobSettings.from_env()
    url = redis_url or current_url(settings.redis_url, settings.data_dir)
    if url is None:
        raise RuntimeError(
            "no Redis: set JANUS_REDIS_URL, or start `janus worker` (it starts the embedded "
            f"redis-server for {settings.data_dir})"
        )
    app = Celery("janus", set_as_current=False)
    app.conf.update(celery_config(settings, url))
    app.conf.janus_settings = settings.model_dump(mode="json")
    app.task(name=LEARN_JOB, bind=True)(learn_job)
    worker_process_init.connect(_preload, weak=False, dispatch_uid="janus-preload")
    return app


def app_settings(app: Celery) -> JobSettings:
    """The job settings an app was created with."""
    return JobSettings.from_env({}, **app.conf.janus_settings)


@cache
def _default_app() -> Celery:
    return create_app()


def __getattr__(name: str) -> Celery:
    """`app` for `celery -A learner.jobs.app worker`, created from the environment on use."""
    if name == "app":
        return _default_app()
    raise AttributeError(name)
