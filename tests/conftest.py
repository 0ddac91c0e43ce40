"""Real services for the tests: a redis-server and moto's S3 server on free ports.

They start before any test module imports ``workers.app`` (pytest_configure),
so the producer side of the tests is configured the way a user's process is:
through environment variables. Each test gets its own staging database and
its own bucket; Celery's broker and results share database 0.
"""

from __future__ import annotations

import gc
import itertools
import os
import re
from collections.abc import Iterator

import boto3
import pytest
import redis

from batcher.config import Settings
from batcher.embedded import RedisServer, S3Server
from batcher.staging import Staging, connect
from tests.support import Stack

_services: dict[str, object] = {}
_db_numbers = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    redis_server = RedisServer(appendonly=True, databases=4096)
    s3_server = S3Server(in_process=False)
    _services.update(redis=redis_server, s3=s3_server)
    os.environ.update(
        CELERY_BROKER_URL=redis_server.url(0),
        CELERY_RESULT_BACKEND=redis_server.url(0),
        S3BATCH_REDIS_URL=redis_server.url(0),
        AWS_ENDPOINT_URL=s3_server.endpoint_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "S3BATCH_BUCKET"):
        os.environ.pop(name, None)


def pytest_unconfigure(config: pytest.Config) -> None:
    # Collect the tests' AsyncResults now: their __del__ unsubscribes from the result backend, which must
    # still be running (otherwise the unsubscribe fails at exit and pytest reports it as an error).
    gc.collect()
    for service in _services.values():
        service.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    return _services["redis"]  # type: ignore[return-value]


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    return _services["s3"]  # type: ignore[return-value]


@pytest.fixture
def s3(s3_server: S3Server):  # type: ignore[no-untyped-def]
    client = boto3.client("s3", endpoint_url=s3_server.endpoint_url)
    yield client
    client.close()


@pytest.fixture
def stack(redis_server: RedisServer, s3_server: S3Server, s3, tmp_path, request) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    """A clean staging database, a new bucket, and what a test needs to run workers against them."""
    db = next(_db_numbers)
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40]
    bucket = f"test-{db}-{slug}".rstrip("-")
    s3.create_bucket(Bucket=bucket)
    broker = redis.Redis.from_url(redis_server.url(0))
    for key in broker.scan_iter(match="s3batch*"):
        broker.delete(key)
    broker.delete("unacked", "unacked_index", "unacked_mutex")
    from workers.app import app

    app.control.purge()
    settings = Settings(bucket=bucket, redis_url=redis_server.url(db), max_batch_age_s=1.0)
    client = connect(settings.redis_url)
    client.flushdb()
    stack = Stack(settings=settings, staging=Staging(client), s3=s3, tmp_path=tmp_path)
    try:
        yield stack
    finally:
        stack.stop_workers()
        client.flushdb()
        client.close()
        broker.close()
