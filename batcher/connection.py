"""The staging Redis, whatever its topology: one server, a Sentinel group, or a Redis Cluster.

- ``redis://``, ``rediss://``, ``unix://``: one server; if it turns out to be a Redis Cluster node (``INFO
  cluster``), a cluster client over the whole cluster (any node's URL will do);
- ``redis+cluster://``: a Redis Cluster, said explicitly;
- ``sentinel://HOST:PORT[;sentinel://HOST:PORT...]/DB`` (the form Celery uses for its broker) with
  S3BATCH_REDIS_SENTINEL_MASTER: the master the sentinels name, followed across failovers.

Every staging script touches the keys of one lane only, all passed in KEYS and sharing its hash tag, so the
same scripts run on all three.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel

from batcher.errors import StagingError
from batcher.preflight import redact

_OPTIONS: dict[str, Any] = {"decode_responses": False, "socket_connect_timeout": 5}
SENTINEL_PREFIX = "sentinel://"
CLUSTER_PREFIX = "redis+cluster://"


def connect(redis_url: str, sentinel_master: str | None = None) -> Any:
    """A client for the staging Redis at ``redis_url`` (bytes in, bytes out); StagingError for a bad URL.

    Returns a ``redis.Redis`` or a ``redis.cluster.RedisCluster`` (same commands for what staging uses).
    """
    try:
        if redis_url.startswith(SENTINEL_PREFIX):
            return _sentinel(redis_url, sentinel_master)
        if redis_url.startswith(CLUSTER_PREFIX):
            return RedisCluster.from_url("redis://" + redis_url.removeprefix(CLUSTER_PREFIX), **_OPTIONS)
        client = redis.Redis.from_url(redis_url, health_check_interval=30, **_OPTIONS)
    except (ValueError, redis.RedisError) as exc:
        raise StagingError(f"S3BATCH_REDIS_URL={_safe(redis_url)!r} cannot be used: {exc}") from None
    if _is_cluster_node(client):
        client.close()
        return RedisCluster.from_url(redis_url, **_OPTIONS)
    return client


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def _is_cluster_node(client: redis.Redis) -> bool:
    """Whether the server answers as a Redis Cluster node; False when it cannot be asked (the error will come
    with the first real command, or from the preflight checks)."""
    try:
        return bool(client.info("cluster").get("cluster_enabled"))
    except redis.RedisError:
        return False


def _sentinel(redis_url: str, master: str | None) -> Any:
    if not master:
        raise StagingError(f"S3BATCH_REDIS_URL={_safe(redis_url)!r} lists sentinels: set S3BATCH_REDIS_SENTINEL_MASTER")
    hosts: list[tuple[str, int]] = []
    db, password, username = 0, None, None
    for part in redis_url.split(";"):
        parts = urlsplit(part.strip())
        if parts.scheme != "sentinel" or not parts.hostname:
            raise StagingError(f"{_safe(part)!r} is not a sentinel://HOST:PORT address")
        hosts.append((parts.hostname, parts.port or 26379))
        if parts.path.strip("/"):
            db = int(parts.path.strip("/"))
        password = unquote(parts.password) if parts.password else password
        username = unquote(parts.username) if parts.username else username
    sentinel = Sentinel(hosts, socket_connect_timeout=5)  # type: ignore[no-untyped-call]  # untyped in redis-py
    options = {"db": db, "password": password, "username": username, **_OPTIONS}
    return sentinel.master_for(master, **options)  # type: ignore[no-untyped-call]


def _safe(url: str) -> str:
    return ";".join(redact(part) for part in url.split(";"))
