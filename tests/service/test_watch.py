"""The pointer watch of the hot-swap thread: while Redis announcements reach it, a worker reads the
store only every `safety_poll_s` and swaps at once on an announcement; without them (no Redis, or
the subscription broke) it reads the store every `poll_s`; the store's own commands announce
their moves; `janus init`. Against a real Redis and a real store."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from adapters_store import open_store
from learner.jobs.client import SERVING_CHANNEL
from learner.jobs.redis_embedded import EmbeddedRedis, start_embedded
from service.swap import HotSwapper, announce_change
from tests.service.conftest import make_api
from tests.service.stack import free_port

pytestmark = pytest.mark.integration


def _until(condition: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until `condition` held, or None if it did not within `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.02)
    return None


def _serves(swapper: HotSwapper, version: str) -> Callable[[], bool]:
    return lambda: swapper.current is not None and swapper.current.version == version


def _subscribed() -> float | None:
    return REGISTRY.get_sample_value("janus_announcements_subscribed")


def _checks(cause: str) -> float:
    return REGISTRY.get_sample_value("janus_pointer_checks_total", {"cause": cause}) or 0.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = start_embedded(tmp_path / "redis")  # its own: this test stops it
    yield server
    server.stop()


def test_announcements_carry_the_swap_and_the_poll_slows_down(
    version_store: Path, tmp_path: Path, own_redis: EmbeddedRedis
) -> None:
    root = Path(shutil.copytree(version_store, tmp_path / "store"))
    a = make_api(root, redis_url=own_redis.url, safety_poll_s=60)  # poll_s 0.2
    swapper = a.serving.swapper
    swapper.start()
    try:
        assert _until(lambda: _subscribed() == 1, 10) is not None
        polled = _checks("poll")
        a.store.activate("v0001", actor="test")  # moved, not announced: the slow poll
        assert _until(_serves(swapper, "v0001"), 1.5) is None
        assert _checks("poll") - polled <= 1  # not one read per poll_s

        announced = _checks("announced")
        announce_change(own_redis.url, {"event": "serving-changed", "version": "v0001"})
        took = _until(_serves(swapper, "v0001"), 2.0)
        assert took is not None and took < 1.0, took
        assert _checks("announced") == announced + 1

        own_redis.stop()  # the subscription breaks: back to reading every poll_s
        assert _until(lambda: _subscribed() == 0, 15) is not None
        a.store.activate("v0002", actor="test")
        assert _until(_serves(swapper, "v0002"), 1.5) is not None
    finally:
        a.serving.stop()


def test_without_redis_every_poll_reads_the_pointer(version_store: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(version_store, tmp_path / "store"))
    nobody = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    a = make_api(root, redis_url=nobody, safety_poll_s=60)
    swapper = a.serving.swapper
    swapper.start()
    try:
        assert _until(_serves(swapper, "v0002"), 5) is not None
        polled = _checks("poll")
        a.store.activate("v0001", actor="test")
        assert _until(_serves(swapper, "v0001"), 1.5) is not None
        time.sleep(1.5)
        assert _checks("poll") - polled >= 4  # about one read per poll_s (0.2 s)
        assert _subscribed() in (0, None)
    finally:
        a.serving.stop()


def test_the_safety_poll_may_not_be_faster_than_the_poll() -> None:
    from service.config import ServiceSettings

    with pytest.raises(ValueError, match="JANUS_SAFETY_POLL_S"):
        ServiceSettings.from_env({}, poll_s=2.0, safety_poll_s=1.0)


def test_store_commands_run_without_a_service_announce_their_moves(
    version_store: Path, tmp_path: Path, own_redis: EmbeddedRedis
) -> None:
    """`janus activate | rollback | shadow` against the store itself publish on the job settings'
    Redis, so settled workers (polling every 30 s) swap at once."""
    import redis

    from tests.service.test_cli import janus

    root = Path(shutil.copytree(version_store, tmp_path / "store"))
    home = {"JANUS_STORE": str(root), "JANUS_DATA_DIR": str(tmp_path / "data")}
    with redis.Redis.from_url(own_redis.url) as client:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(SERVING_CHANNEL)
        for args, expected in (
            (("activate", "v0001"), {"event": "serving-changed", "version": "v0001"}),
            (("rollback",), {"event": "serving-changed", "version": "v0002"}),
            (("shadow", "v0001"), {"event": "shadow-changed", "version": "v0001"}),
        ):
            done = janus(home, *args, JANUS_REDIS_URL=own_redis.url)
            assert done.returncode == 0, done.stderr
            deadline, message = time.monotonic() + 5, None
            while message is None and time.monotonic() < deadline:  # None: the subscription's
                message = pubsub.get_message(timeout=0.5)  # confirmation, or nothing yet
            assert message is not None, args
            assert json.loads(message["data"]).items() >= expected.items(), message
        pubsub.close()


def test_init_leaves_a_store_with_versions_alone_and_needs_redis_for_an_empty_one(
    version_store: Path, tmp_path: Path
) -> None:
    from tests.service.test_cli import janus, one_error_line

    done = janus({"JANUS_STORE": str(version_store), "JANUS_DATA_DIR": str(tmp_path)}, "init")
    assert done.returncode == 0 and "nothing to do" in done.stdout, done.stderr
    empty = {"JANUS_STORE": str(tmp_path / "empty"), "JANUS_DATA_DIR": str(tmp_path / "data")}
    open_store(empty["JANUS_STORE"])
    assert "JANUS_REDIS_URL" in one_error_line(janus(empty, "init"))
