"""Losses are reported: staged data gone with a Redis restarted empty fails its callers with the reason; a
reused task id is refused; a message the Redis broker lost is sent again by the producer's wait."""

from __future__ import annotations

import dataclasses
import gc
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest

from batcher.embedded import RedisServer
from batcher.errors import StagingLostError, TaskIdReusedError
from batcher.models import BatchRef
from tests.brokers import Broker
from tests.support import Stack
from workers.app import create_app
from workers.bulkwait import BulkResultSet
from workers.results import PutObjectResult


@pytest.fixture
def forgetful_redis() -> Iterator[RedisServer]:
    """A redis-server without persistence: a restart empties it."""
    server = RedisServer(appendonly=False)
    yield server
    gc.collect()  # the tests' AsyncResults unsubscribe when collected: while the server still answers
    server.close()


def wait_states(results: list[Any], state: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while {r.state for r in results} != {state}:
        assert time.monotonic() < deadline, {r.state for r in results}
        time.sleep(0.1)


def test_results_left_staged_by_lost_staging_turn_failure(stack: Stack, forgetful_redis: RedisServer) -> None:
    """Staging restarts empty, the result backend (another Redis) survives: every STAGED caller hears why."""
    settings = dataclasses.replace(stack.settings, redis_url=forgetful_redis.url(0), max_batch_age_s=600)
    stack.start_worker(S3BATCH_REDIS_URL=settings.redis_url, S3BATCH_MAX_BATCH_AGE=600)
    app = create_app(settings)
    results = [app.tasks["s3batch.put_object"].delay(f"lost/{i}", b"x" * i) for i in range(50)]
    wait_states(results, "STAGED")
    forgetful_redis.stop()
    forgetful_redis.start()  # empty: its epoch and staged objects are gone
    started = time.monotonic()
    for result in results:
        with pytest.raises(StagingLostError, match=r"staged data is gone: the Redis restarted without appendonly"):
            result.get(timeout=40)
    assert time.monotonic() - started < 30  # the loss check runs every 10 s
    done = subprocess.run(
        [sys.executable, "-m", "batcher.cli", "stats", "--json"], env=stack.env(S3BATCH_REDIS_URL=settings.redis_url),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    figures = json.loads(done.stdout)
    assert figures["lost_objects"] == 50 and figures["objects_waiting"] == 0, figures


def test_waits_raise_when_the_results_were_lost_with_the_staging(
    stack: Stack, forgetful_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staging and results in one Redis that restarts empty: the waits see STAGED turn PENDING and raise."""
    url = forgetful_redis.url(0)
    monkeypatch.setenv("CELERY_RESULT_BACKEND", url)
    settings = dataclasses.replace(stack.settings, redis_url=url, max_batch_age_s=600)
    stack.start_worker(S3BATCH_REDIS_URL=url, CELERY_RESULT_BACKEND=url, S3BATCH_MAX_BATCH_AGE=600)
    app = create_app(settings)
    single = app.tasks["s3batch.put_object"].delay("lost/single", b"one")
    many = [app.tasks["s3batch.put_object"].delay(f"lost/{i}", b"many") for i in range(20)]
    wait_states([single, *many], "STAGED")
    waiting = BulkResultSet(many, app=app)
    forgetful_redis.stop()
    forgetful_redis.start()
    with pytest.raises(StagingLostError, match=r"was STAGED .* and its result is gone"):
        single.get(timeout=30)
    with pytest.raises(StagingLostError):
        waiting.join_native(timeout=30)


def test_a_reused_task_id_with_another_object_fails_and_keeps_the_first(stack: Stack) -> None:
    from workers.tasks import put_object

    stack.start_worker()
    first = put_object.apply_async(("reused/first", b"first body"), task_id="reused-task-id-1")
    ref = BatchRef.from_dict(first.get(timeout=30))
    again = put_object.apply_async(("reused/first", b"first body"), task_id="reused-task-id-1")
    assert BatchRef.from_dict(again.get(timeout=30)) == ref  # the same object again: a redelivery, harmless
    reuse = (  # another producer process, with its own result cache
        "from workers.tasks import put_object\n"
        "put_object.apply_async(('reused/second', b'another body'), task_id='reused-task-id-1').get(timeout=30)\n"
    )
    done = subprocess.run([sys.executable, "-c", reuse], env=stack.env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1  # refused when sent: the id already names reused/first
    assert "TaskIdReusedError: task id reused-task-id-1 already names object 'reused/first'" in done.stderr
    # A message that bypasses that check (any other client of the queue) is refused by the worker, which says so
    # in the result itself (Celery never replaces a SUCCESS on its own).
    put_object.app.send_task(put_object.name, ("reused/second", b"another body"), task_id="reused-task-id-1")
    deadline = time.monotonic() + 30
    while (meta := put_object.backend.get_task_meta("reused-task-id-1", cache=False))["status"] != "FAILURE":
        assert time.monotonic() < deadline, meta
        time.sleep(0.1)
    assert isinstance(meta["result"], TaskIdReusedError) and "already staged another object" in str(meta["result"])
    assert stack.tar_bytes(ref.key)[ref.offset : ref.offset + ref.size] == b"first body"
    members = [m.name for key in stack.batch_keys() for m in stack.members(key)]
    assert members == ["reused/first"]  # the second object was never staged


def test_messages_the_redis_broker_lost_are_sent_again_by_the_wait(broker: Broker, stack: Stack, tmp_path: Any) -> None:
    """SIGKILLs while a worker pulls put_object messages: kombu's window loses some; the bulk wait resends them.

    On RabbitMQ the same three SIGKILLs lose nothing (acknowledgements are the broker's own): every object lands
    without a resend, which s3batch never attempts there."""
    from workers.tasks import put_object

    rng = random.Random(3)
    bodies = [rng.randbytes(rng.randint(0, 500)) for _ in range(1000)]
    results = [put_object.delay(f"pulled/{i:04d}", body) for i, body in enumerate(bodies)]
    for _ in range(3):  # three workers killed at random moments while they pull
        worker = stack.start_worker(beat=False, concurrency=1, queues="s3batch")
        time.sleep(rng.uniform(0.3, 1.2))
        worker.kill()
        worker.stop()
    stack.start_worker(concurrency=2)
    values = BulkResultSet(results, app=put_object.app).join_native(timeout=180)
    refs = [BatchRef.from_dict(v) for v in values]
    assert [stack.tar_bytes(r.key)[r.offset : r.offset + r.size] for r in refs] == bodies
    resent = sum(cast(PutObjectResult, r).resends for r in results)
    print(f"\nmessages sent again after the {broker.name} broker lost them: {resent}")
    if broker.is_rabbitmq:
        assert resent == 0
    members = [(key, m.offset_data) for key in stack.batch_keys() for m in stack.members(key)]
    assert len(members) == len(set(members)) == len(bodies)  # every object in exactly one tar


def test_a_message_popped_and_never_recorded_is_sent_again(stack: Stack, redis_server: RedisServer) -> None:
    """kombu's window, made on purpose: messages taken off the queue that no unacknowledged table holds (a
    worker SIGKILLed between its BRPOP and its bookkeeping). The bulk wait sends exactly those again."""
    import redis

    app = create_app(stack.settings)  # its visibility timeout is the workers': 10 s
    put_object = app.tasks["s3batch.put_object"]
    results = [put_object.delay(f"popped/{i:02d}", b"%d" % i) for i in range(30)]
    broker = redis.Redis.from_url(redis_server.url(0))
    for _ in range(3):
        assert broker.rpop("s3batch") is not None  # the three oldest messages vanish
    broker.close()
    stack.start_worker()
    started = time.monotonic()
    values = BulkResultSet(results, app=app).join_native(timeout=120)
    assert [v["object_key"] for v in values] == [f"popped/{i:02d}" for i in range(30)]
    assert [cast(PutObjectResult, r).resends for r in results] == [1, 1, 1] + [0] * 27
    print(f"\nthree lost messages sent again; all 30 objects landed in {time.monotonic() - started:.1f} s")
