"""Store fixtures: a fresh store per test on local disk, in memory, and on a loopback S3 server.

The S3 server is moto's standalone server, started once per session on 127.0.0.1 with a free
port; stores reach it through s3fs exactly as they would reach AWS or MinIO.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

BUCKET = "janus-test"
BACKENDS = [
    pytest.param("local", id="local"),
    pytest.param("memory", id="memory"),
    pytest.param("s3", id="s3", marks=pytest.mark.integration),
]
SHARED_BACKENDS = [  # stores other processes can open too
    pytest.param("local", id="local"),
    pytest.param("s3", id="s3", marks=pytest.mark.integration),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def atomic_conditional_puts() -> None:
    """Makes moto's conditional PUT atomic, as it is on S3 (moto checks, then writes)."""
    from moto.s3.responses import S3Response

    original = S3Response.put_object
    lock = threading.Lock()

    def put_object(self: S3Response) -> object:
        with lock:
            return original(self)

    S3Response.put_object = put_object  # type: ignore[method-assign,assignment]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Starts moto's S3 server on loopback and points the AWS environment at it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    atomic_conditional_puts()
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        import s3fs

        s3fs.S3FileSystem(skip_instance_cache=True).mkdir(BUCKET)
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _uri(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "local":
        return str(tmp_path / "store")
    if kind == "memory":
        return f"memory://janus-{uuid.uuid4().hex}"
    request.getfixturevalue("s3_server")
    return f"s3://{BUCKET}/{uuid.uuid4().hex}"


@pytest.fixture(params=BACKENDS)
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store location on each backend."""
    return _uri(request.param, tmp_path, request)


@pytest.fixture(params=SHARED_BACKENDS)
def shared_store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store location that subprocesses can open (local disk, S3)."""
    return _uri(request.param, tmp_path, request)
