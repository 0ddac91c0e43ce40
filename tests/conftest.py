"""Real services for the tests: a redis-server and moto's S3 server on free ports.

Their ports are chosen, and the environment pointed at them, before any test
module imports ``workers.app`` (pytest_configure), so the producer side of the
tests is configured the way a user's process is: through environment
variables. They start on first use, so the tests of pure modules run without
them (``make test-fast`` runs only those: every test that uses a service
fixture is marked ``services``). Each test gets its own staging database and
its own bucket; Celery's broker and results share database 0.
"""

from __future__ import annotations

import gc
import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from batcher.config import Settings
from batcher.connection import connect
from batcher.embedded import LOOPBACK, RedisServer, S3Server, free_port
from batcher.lanes import Lanes
from tests.s3backends import S3Backend, backend_for, close_servers, parametrize
from tests.support import Stack
from workers.app import UNACKED_KEYS, app

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytest_plugins = ["tests.brokers"]  # the ``broker`` fixture: a test's broker, Redis or RabbitMQ

_ports: dict[str, int] = {}
_services: dict[str, RedisServer | S3Server] = {}
_db_numbers = itertools.count(1)
SERVICE_FIXTURES = frozenset({"redis_server", "s3_server"})


def pytest_configure(config: pytest.Config) -> None:
    _ports.update(redis=free_port(), s3=free_port())
    redis_url = f"redis://{LOOPBACK}:{_ports['redis']}/0"
    os.environ.update(
        CELERY_BROKER_URL=redis_url,
        CELERY_RESULT_BACKEND=redis_url,
        S3BATCH_REDIS_URL=redis_url,
        AWS_ENDPOINT_URL=f"http://{LOOPBACK}:{_ports['s3']}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "S3BATCH_BUCKET", "S3BATCH_CELERY_CONFIG"):
        os.environ.pop(name, None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests that use services; deselect (pytest reports the count) the axis combinations not run:
    RabbitMQ on SeaweedFS (the broker and the S3 server are independent: each axis runs against the other's
    default), and every second axis value with ``--first-axes`` (`make test-oldest`: the oldest Celery, kombu,
    redis-py and boto3 on Redis and moto, where the version differences are)."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)
        params = getattr(getattr(item, "callspec", None), "params", {})
        broker, server = params.get("broker"), params.get("s3_backend")
        first_only = config.getoption("--first-axes") and (
            broker not in (None, "redis") or server not in (None, "moto")
        )
        (dropped if first_only or (broker == "rabbitmq" and server == "seaweedfs") else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--first-axes", action="store_true", help="run the broker and S3-server axes on Redis and moto only"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize(metafunc)  # tests marked s3_servers run on moto and SeaweedFS (tests/s3backends.py)


def pytest_unconfigure(config: pytest.Config) -> None:
    # Collect the tests' AsyncResults now: their __del__ unsubscribes from the result backend, which must
    # still be running (otherwise the unsubscribe fails at exit and pytest reports it as an error).
    gc.collect()
    for service in _services.values():
        service.close()
    close_servers()


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    """The tests' redis-server, started on first use on the port the environment names."""
    if "redis" not in _services:
        _services["redis"] = RedisServer(appendonly=True, databases=4096, port=_ports["redis"])
    server = _services["redis"]
    assert isinstance(server, RedisServer)
    return server


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    """moto's S3 server as a process, started on first use on the port the environment names."""
    if "s3" not in _services:
        _services["s3"] = S3Server(in_process=False, port=_ports["s3"])
    server = _services["s3"]
    assert isinstance(server, S3Server)
    return server


@pytest.fixture
def s3_backend(s3_server: S3Server, request: pytest.FixtureRequest) -> S3Backend:
    """This test's S3 server: moto, or the one pytest_generate_tests chose for a test marked s3_servers."""
    return backend_for(getattr(request, "param", "moto"), s3_server)


@pytest.fixture
def s3(s3_backend: S3Backend) -> Iterator[S3Client]:
    client = s3_backend.client()
    yield client
    client.close()


@pytest.fixture
def stack(
    redis_server: RedisServer, s3_backend: S3Backend, s3: S3Client, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """A clean staging database, a new bucket, and what a test needs to run workers against them."""
    db = next(_db_numbers)
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40]
    bucket = f"test-{db}-{slug}".rstrip("-")
    s3.create_bucket(Bucket=bucket)
    broker = redis.Redis.from_url(redis_server.url(0))
    for key in broker.scan_iter(match="s3batch*"):
        broker.delete(key)
    broker.delete(*UNACKED_KEYS.values())
    app.control.purge()
    settings = Settings(bucket=bucket, redis_url=redis_server.url(db), max_batch_age_s=1.0)
    client = connect(settings.redis_url)
    client.flushdb()
    lanes = Lanes(client, settings)
    stack = Stack(settings=settings, lanes=lanes, staging=lanes.default_lane(), s3=s3, tmp_path=tmp_path,
                  s3_env=s3_backend.env)  # fmt: skip
    try:
        yield stack
    finally:
        stack.stop_workers()
        client.flushdb()
        client.close()
        broker.close()
