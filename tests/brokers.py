"""The broker axis of the tests: a test that takes the ``broker`` fixture runs once on Redis, once on RabbitMQ.

Loaded as a plugin by tests/conftest.py. On ``[rabbitmq]`` the test gets a fresh vhost on the shared RabbitMQ
node (tests/services/rabbit.py) and ``CELERY_BROKER_URL`` names it for the whole test: Celery reads that
variable before its own ``broker_url`` setting, so the test process's producer (``workers.app.app``, whose
pooled connections are dropped on the way in and out) and the workers a ``Stack`` starts (they inherit the
environment) both use it. Results and staging stay on the tests' Redis. Ask for ``broker`` before ``stack``,
so that the workers stop before the vhost is deleted.

The ``[rabbitmq]`` case is skipped, with the reason, only when RabbitMQ cannot be reached at all
(``rabbitmq_available()``: rabbitmqctl missing or nothing on 127.0.0.1:5672; ``scripts/ensure-system-packages
--test`` installs and starts it); any other trouble with the node is an error, never a skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from batcher.embedded import RedisServer
from tests.services.rabbit import RabbitMQ, rabbitmq_available
from workers.app import app
from workers.celery_internals import forget_broker_connections

BROKERS = ("redis", "rabbitmq")


@dataclass(frozen=True)
class Broker:
    """The broker of one test: ``name`` is its parameter id, ``url`` what CELERY_BROKER_URL holds."""

    name: str
    url: str
    rabbit: RabbitMQ | None = None

    @property
    def is_rabbitmq(self) -> bool:
        return self.rabbit is not None


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[Broker]:
    """Redis (the tests' redis-server) or a fresh RabbitMQ vhost, for the producer and the workers."""
    if request.param == "redis":
        yield Broker("redis", os.environ["CELERY_BROKER_URL"])
        return
    reason = rabbitmq_available()
    if reason is not None:
        pytest.skip(f"RabbitMQ broker cannot run here: {reason}")
    with RabbitMQ() as rabbit, using_broker(rabbit.url):
        yield Broker("rabbitmq", rabbit.url, rabbit)


@contextmanager
def using_broker(url: str) -> Iterator[None]:
    """Point this process's producer and the workers started meanwhile at the broker ``url``."""
    previous = os.environ["CELERY_BROKER_URL"]
    os.environ["CELERY_BROKER_URL"] = url
    forget_broker_connections(app)
    try:
        yield
    finally:
        os.environ["CELERY_BROKER_URL"] = previous
        forget_broker_connections(app)  # before the broker (and the connections to it) goes
