"""Where the job system's Redis is (DESIGN.md §6): one server, or a master found through Sentinel.

`JANUS_REDIS_URL` takes three forms:

    redis://[[user]:password@]host[:port][/db]      a server, as redis-py reads the URL
    rediss://[[user]:password@]host[:port][/db]     the same over TLS (a managed endpoint); the
                                                    server's certificate is verified unless the
                                                    URL says otherwise (?ssl_cert_reqs=none)
    redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/master[/db][?sentinel_password=…]
                                                    the master that the sentinels at these
                                                    addresses (port 26379 unless given) know as
                                                    `master`; user and password are the master's,
                                                    sentinel_password the sentinels' own

`redis_from_url` makes every Redis client of the project; `celery_connection` gives the Celery
settings of a broker and a result backend at the same place (kombu's and Celery's `sentinel://`
forms for Sentinel). A client through Sentinel asks the sentinels for the master whenever it opens
a connection, and opens a new one when its master stops answering or turns replica, so after a
failover it reaches the new master; Celery's broker and result backend (redis-py's Sentinel pool
too) do the same.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
SYNTAX = (
    "redis://[[user]:password@]host[:port][/db], rediss://… (TLS), or "
    "redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/master-name[/db]"
    "[?sentinel_password=…]"
)
_SENTINEL_QUERY = ("sentinel_password",)


@dataclass(frozen=True)
class SentinelTarget:
    """A Redis master behind Sentinel: the sentinels' addresses, its name, database, passwords."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # the master's
    sentinel_password: str | None = field(default=None, repr=False)

    def sentinel_kwargs(self, timeouts: Mapping[str, float]) -> dict[str, Any]:
        """Connection arguments of the sentinels themselves: `timeouts`, and their password."""
        kwargs: dict[str, Any] = {k: v for k, v in timeouts.items() if k.startswith("socket_")}
        if self.sentinel_password is not None:
            kwargs["password"] = self.sentinel_password
        return kwargs

    def celery_url(self) -> str:
        """kombu's and Celery's form: `sentinel://[user:password@]host:port/db` for each sentinel,
        joined by ';'. Each carries the master's credentials: kombu reads them from the address
        it uses, and moves to the next one when a connection fails."""
        auth = quote(self.username or "", safe="")
        if self.password is not None:
            auth += ":" + quote(self.password, safe="")
        auth = f"{auth}@" if auth else ""
        return ";".join(
            f"sentinel://{auth}{_netloc(host, port)}/{self.db}" for host, port in self.sentinels
        )


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def redacted(url: str) -> str:
    """`url` with its passwords replaced by `***`, to show in messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***" if "@" in url else url
    head, question, query = rest.partition("?")
    userinfo, at, hosts = head.rpartition("@")  # the last '@': a password may hold a '/'
    if at:
        user, colon, _password = userinfo.partition(":")
        head = f"{user}{colon}***@{hosts}" if colon else f"{user}@{hosts}"
    if question:
        pairs = [pair.partition("=") for pair in query.split("&")]
        query = "&".join(
            f"{k}{eq}***" if "password" in k.lower() and eq else f"{k}{eq}{v}" for k, eq, v in pairs
        )
    return f"{scheme}://{head}{question}{query}"


def parse_redis_url(url: str) -> SentinelTarget | None:
    """The master a `redis+sentinel://` URL names; None for a `redis://` or `rediss://` URL.

    Raises:
        ValueError: any other URL, or a Sentinel URL that lacks a part; the message says what to
            write (and shows the URL without its passwords).
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in ("redis", "rediss"):
        return None
    if scheme == "sentinel":
        raise _bad(
            url,
            "that is kombu's form, which cannot name the master; write "
            "redis+sentinel://host:26379[,host:26379…]/master-name[/db]",
        )
    if scheme == "rediss+sentinel":
        raise _bad(
            url,
            "TLS through Sentinel is not supported; use redis+sentinel:// on a private network, "
            "or a managed endpoint's rediss:// URL",
        )
    if scheme != SENTINEL_SCHEME:
        raise _bad(url, f"write {SYNTAX}")
    parts = urlsplit(url)
    if parts.fragment:
        raise _bad(url, "a '#' starts a fragment: percent-encode it (%23) in a password")
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    sentinels = tuple(_address(url, item) for item in hostlist.split(","))
    path = [unquote(segment) for segment in parts.path.strip("/").split("/")] if parts.path else []
    if not path or not path[0] or len(path) > 2:
        raise _bad(
            url,
            "name the master after the sentinels: "
            "redis+sentinel://host:26379[,host:26379…]/master-name[/db]",
        )
    db = path[1] if len(path) == 2 else "0"
    if not (db.isascii() and db.isdigit()):
        raise _bad(url, f"the database after the master's name is a number (0, 1, …), got {db!r}")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(_SENTINEL_QUERY))
    if unknown:
        raise _bad(
            url, f"unknown parameter {', '.join(unknown)}; the one known is sentinel_password"
        )
    return SentinelTarget(
        sentinels=sentinels,
        master=path[0],
        db=int(db),
        username=(unquote(user) or None) if at else None,
        password=unquote(password) if at and colon else None,
        sentinel_password=query.get("sentinel_password", [""])[-1] or None,
    )


def _address(url: str, item: str) -> tuple[str, int]:
    try:
        parts = urlsplit(f"//{item}")
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port == 0:
        raise _bad(
            url, f"{item!r} is not a sentinel's host[:port]; separate sentinels with ',' only"
        )
    return host, port or SENTINEL_PORT


def _bad(url: str, what: str) -> ValueError:
    return ValueError(f"JANUS_REDIS_URL {redacted(url)!r}: {what}")


class _MasterClient(redis.Redis):
    """The master's client through Sentinel; closing it also closes its sentinel connections."""

    def close(self) -> None:
        super().close()
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        if manager is not None:
            manager.close()


def redis_from_url(url: str, **kwargs: Any) -> redis.Redis:
    """A client of the Redis at `url` (any form of the module docstring); `kwargs` are
    `redis.Redis.from_url`'s (timeouts, …). Through Sentinel, they apply to the master's
    connections and the socket timeouts to the sentinels' too.

    Raises:
        ValueError: `url` is not one of the three forms (`parse_redis_url`).
    """
    target = parse_redis_url(url)
    if target is None:
        return redis.Redis.from_url(url, **kwargs)
    sentinel = Sentinel(target.sentinels, sentinel_kwargs=target.sentinel_kwargs(kwargs), **kwargs)
    return sentinel.master_for(
        target.master,
        redis_class=_MasterClient,
        db=target.db,
        username=target.username,
        password=target.password,
    )


@dataclass(frozen=True)
class CeleryConnection:
    """The Celery settings that depend on where Redis is (`celery_connection`)."""

    url: str  # of the broker and of the result backend
    transport_options: dict[str, Any]  # of the broker and of the result backend
    use_ssl: dict[str, Any] | None  # broker_use_ssl and redis_backend_use_ssl


def celery_connection(url: str, timeouts: Mapping[str, float]) -> CeleryConnection:
    """Celery's broker and result backend at `url`, with `timeouts` for the sentinels.

    A Sentinel URL becomes kombu's `sentinel://` form with the master's name and the sentinels'
    password and timeouts as transport options (`master_name`, `sentinel_kwargs`). A rediss://
    URL that does not say how to check certificates gets `ssl_cert_reqs=CERT_REQUIRED` (kombu
    would not check them, and Celery's result backend would refuse the URL).
    """
    target = parse_redis_url(url)
    if target is not None:
        options = {
            "master_name": target.master,
            "sentinel_kwargs": target.sentinel_kwargs(timeouts),
        }
        return CeleryConnection(target.celery_url(), options, None)
    parts = urlsplit(url)
    unchecked = parts.scheme == "rediss" and "ssl_cert_reqs" not in parse_qs(parts.query)
    use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED} if unchecked else None
    return CeleryConnection(url, {}, use_ssl)
