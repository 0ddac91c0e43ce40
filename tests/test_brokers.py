"""What each broker guarantees when a worker hangs, measured with real workers, and RabbitMQ's routing.

A worker that hangs whole (SIGSTOP: a frozen VM, a cut network) holds its prefetched put_object messages until
the broker gives them back: on Redis after the visibility timeout (three batch ages, at least 10 s, swept
every 5 s), on RabbitMQ once it closes the connection, 2 to 3 heartbeats after the worker's last frame
(s3batch sets ``broker_heartbeat`` to 10 s on amqp brokers; with Celery's 120 s, negotiated down to the
node's 60 s, they were held for about three minutes). A task stuck in a live worker keeps heartbeating: on
RabbitMQ only the node's ``consumer_timeout`` (checked every ``channel_tick_interval``) gives its message back.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
from celery.result import AsyncResult
from kombu import Connection

from batcher.config import Settings
from tests.brokers import Broker, using_broker
from tests.services.rabbit import RabbitMQ, RabbitMQNode, rabbitmq_available
from tests.support import Stack
from tests.test_recovery import check_all_landed_once
from workers.app import AMQP_HEARTBEAT_S, EXCHANGE, QUEUE, app, celery_settings, create_app
from workers.bulkwait import BulkResultSet
from workers.redelivery import lost_after_s
from workers.results import PutObjectResult

# How long a hung worker's messages may take to be staged by another worker, flushed (1 s batch age, 0.2 s tick)
# and published, on a busy 2-core machine: the broker's own bound plus 12 s. On Redis that bound is the bulk
# wait's resend (workers.redelivery.lost_after_s: visibility timeout + one sweep + 5 s), which covers a message
# held in kombu's window as well as the unacknowledged ones the sweep gives back.
SLACK_S = 12.0
# RabbitMQ checks a connection's incoming data once per heartbeat and closes it after two checks without any:
# 2 to 3 heartbeats after the hung worker's last frame.
RABBITMQ_BOUND_S = 3 * AMQP_HEARTBEAT_S + SLACK_S


def ready_messages(queue: str = QUEUE) -> int:
    """Messages waiting in ``queue`` on the current broker (neither delivered nor unacknowledged)."""
    (declaration,) = [q for q in app.conf.task_queues if q.name == queue]
    with app.connection_for_write() as connection:
        # Declared as the workers declare it (a passive declare fails on Redis once the queue's list is empty).
        declared = declaration.bind(connection.default_channel).queue_declare()
        return int(declared.message_count)


def test_a_hung_workers_messages_come_back_within_the_bound(broker: Broker, stack: Stack) -> None:
    """SIGSTOP a worker holding prefetched put_objects: another stages them within the broker's bound.

    On Redis a worker stopped between its BRPOP and its bookkeeping holds a message no unacknowledged table
    knows (kombu's window): s3batch's bulk wait sends it again (seen in about one run in two). Every object
    ends SUCCESS exactly once with its bytes, also after the hung worker is let go (SIGCONT) and runs on with
    messages that another worker already handled."""
    producer = create_app(stack.settings)  # the workers' visibility timeout (10 s), so its resend waits as long
    put_object = producer.tasks["s3batch.put_object"]
    hung = stack.start_worker(beat=False, concurrency=1, queues=QUEUE, S3BATCH_MAX_BATCH_AGE=1)
    if broker.is_rabbitmq:
        assert f"broker_heartbeat {AMQP_HEARTBEAT_S} s" in hung.log()
    rng = random.Random(21)
    bodies = [rng.randbytes(rng.randint(0, 400)) for _ in range(300)]
    results = [put_object.delay(f"hung/{i:04d}", body) for i, body in enumerate(bodies)]
    deadline = time.monotonic() + 30
    while sum(AsyncResult(r.id).state != "PENDING" for r in results[:50]) < 10:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    hung.kill(signal.SIGSTOP)  # the whole group: main process (and its heartbeats) and pool process
    stopped = time.monotonic()
    try:
        # Only now another worker: until the stop the hung one was the only consumer, so it holds prefetched
        # messages (with two consumers it had sometimes taken none at the moment of the stop).
        stack.start_worker(beat=True, concurrency=2, S3BATCH_MAX_BATCH_AGE=1)
        starting_s = time.monotonic() - stopped  # the rescuer's start-up, added to the bound below
        while ready_messages():  # the other worker takes everything the hung one does not hold
            assert time.monotonic() - stopped < 30
            time.sleep(0.2)
        time.sleep(1)
        held = sum(AsyncResult(r.id).state == "PENDING" for r in results)
        held_s = time.monotonic() - stopped
        assert held, "the hung worker held no message: nothing was tested"
        values = BulkResultSet(results, app=producer).join_native(timeout=120)
        back_s = time.monotonic() - stopped
        resent = sum(cast(PutObjectResult, r).resends for r in results)
        bound_s = (RABBITMQ_BOUND_S if broker.is_rabbitmq else lost_after_s(producer) + SLACK_S) + starting_s
        print(f"\nhung worker [{broker.name}]: {held} messages still held {held_s:.1f} s after SIGSTOP; all "
              f"{len(bodies)} objects SUCCESS {back_s:.1f} s after it, {resent} resent "
              f"(bound {bound_s:.0f} s)")  # fmt: skip
        assert back_s < bound_s
        if broker.is_rabbitmq:
            assert resent == 0
        payloads = {r.id: value for r, value in zip(results, values, strict=True)}
        by_id = {r.id: body for r, body in zip(results, bodies, strict=True)}
        check_all_landed_once(stack, by_id, payloads)
    finally:
        hung.kill(signal.SIGCONT)
    time.sleep(3)  # the thawed worker finishes its task, finds its connection or its messages gone
    assert {r.id: AsyncResult(r.id).get(timeout=5) for r in results} == payloads
    check_all_landed_once(stack, by_id, payloads)
    hung.kill()
    hung.stop()


@pytest.fixture
def node_with_consumer_timeout() -> Iterator[RabbitMQNode]:
    """A private RabbitMQ node that gives back deliveries unacknowledged for 3 s, checked every 0.5 s."""
    reason = rabbitmq_available()
    if reason is not None and "not installed" in reason:
        pytest.skip(f"RabbitMQ cannot run here: {reason}")
    with RabbitMQNode(settings={"consumer_timeout": "3000"}, rabbit_env={"channel_tick_interval": "500"}) as node:
        yield node


def test_a_task_stuck_in_a_live_worker_comes_back_after_the_consumer_timeout(
    stack: Stack, node_with_consumer_timeout: RabbitMQNode
) -> None:
    """A put_object stuck in a live worker (heartbeats keep going) is staged by another worker once RabbitMQ's
    consumer_timeout closes the stuck worker's channel; the stuck task, released later, changes nothing."""
    from workers.tasks import put_object

    node = node_with_consumer_timeout
    with using_broker(node.url):
        stuck = stack.start_worker(beat=False, concurrency=1, queues=QUEUE, S3BATCH_MAX_BATCH_AGE=1,
                                   S3BATCH_CELERY_CONFIG="tests.stuck_config", S3BATCH_TEST_STUCK_S=20)  # fmt: skip
        result = put_object.delay("stuck/one", b"held by a live worker")
        deadline = time.monotonic() + 30
        while result.id not in stuck.log():  # received: its pool process now sleeps on it
            assert time.monotonic() < deadline, stuck.log()[-2000:]
            time.sleep(0.05)
        received = time.monotonic()
        stack.start_worker(beat=True, concurrency=2, S3BATCH_MAX_BATCH_AGE=1)
        payload = result.get(timeout=60)
        back_s = time.monotonic() - received
        print(
            f"\nstuck task [rabbitmq, consumer_timeout 3 s, tick 0.5 s]: SUCCESS {back_s:.1f} s after it was received"
        )
        assert "acknowledgement" in stuck.log() and "timed out" in stuck.log(), stuck.log()[-3000:]
        assert stack.tar_bytes(payload["key"])[payload["offset"] : payload["offset"] + payload["size"]] == (
            b"held by a live worker"
        )
        stack.stop_workers()  # before the node goes


def test_each_routing_key_reaches_exactly_one_queue_on_rabbitmq() -> None:
    """A message published to the s3batch exchange with a queue's routing key lands in that queue only."""
    reason = rabbitmq_available()
    if reason is not None:
        pytest.skip(f"RabbitMQ cannot run here: {reason}")
    queues = list(app.conf.task_queues)
    assert len({queue.routing_key for queue in queues}) == len(queues)
    with RabbitMQ() as rabbit, Connection(rabbit.url) as connection:
        channel = connection.channel()
        bound = [queue.bind(channel) for queue in queues]
        for queue in bound:
            queue.declare()
        producer = connection.Producer(channel)
        for queue in queues:
            producer.publish({"probe": queue.name}, exchange=EXCHANGE, routing_key=queue.routing_key)
        received: dict[str, list[Any]] = {}
        for queue in bound:  # the same channel: RabbitMQ routed the publishes before it answers these gets
            received[queue.name] = []
            while (message := queue.get(no_ack=True)) is not None:
                received[queue.name].append(message.payload["probe"])
    assert received == {queue.name: [queue.name] for queue in queues}


def test_workers_on_rabbitmq_get_a_short_heartbeat_unless_their_config_module_sets_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """broker_heartbeat is s3batch's 10 s on amqp brokers only, and a configuration module's own value wins."""
    settings = Settings(bucket="b", redis_url="redis://127.0.0.1:1/0")
    monkeypatch.delenv("CELERY_BROKER_URL")
    assert "broker_heartbeat" not in celery_settings(settings, {})
    assert celery_settings(settings, {"broker_url": "amqp://guest@h//"})["broker_heartbeat"] == AMQP_HEARTBEAT_S
    monkeypatch.setenv("CELERY_BROKER_URL", "pyamqp://guest:guest@127.0.0.1:5672/v")
    assert celery_settings(settings, {})["broker_heartbeat"] == AMQP_HEARTBEAT_S
    assert celery_settings(settings, {"broker_heartbeat": 60})["broker_heartbeat"] == 60
    assert create_app(settings, {}).conf.broker_heartbeat == AMQP_HEARTBEAT_S
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    assert "broker_heartbeat" not in celery_settings(settings, {"broker_url": "amqp://guest@h//"})


def test_skips_say_why() -> None:
    """The RabbitMQ cases skip only with a reason naming what is missing (never silently)."""
    reason = rabbitmq_available(port=1)  # nothing listens on port 1
    assert reason is not None and ("127.0.0.1:1" in reason or "not installed" in reason), reason
