"""Guarantee 5 with real workers: SIGKILL a worker at each point of a flush, then a fresh worker finishes.

The kills that leave something in S3 (a stored tar whose results are not published, an incomplete multipart
upload, a thawed flush uploading again) run on moto and on SeaweedFS (``s3_servers``): there the server's
answer to the second upload (412) and its handling of an abandoned multipart upload decide the outcome. The
others are about Redis and the broker and run on moto.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
import uuid
from typing import Any

import pytest
from celery.result import AsyncResult, ResultSet

from batcher.embedded import RedisServer
from batcher.models import StagedObject
from batcher.uploader import MULTIPART_THRESHOLD_BYTES
from tests.brokers import Broker
from tests.factories import stage_with
from tests.support import Stack
from workers.process import WorkerProcess


def wait_dead(worker: WorkerProcess, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while worker.process.poll() is None:
        assert time.monotonic() < deadline, f"worker did not reach its crash point:\n{worker.log()[-3000:]}"
        time.sleep(0.05)
    worker.stop()  # reap what is left of the process group


def tars(stack: Stack) -> dict[str, dict[str, Any]]:
    """Every tar in the bucket with its ETag and LastModified."""
    heads = {}
    for key in stack.batch_keys():
        head = stack.s3.head_object(Bucket=stack.settings.require_bucket(), Key=key)
        heads[key] = {"etag": head["ETag"], "modified": head["LastModified"]}
    return heads


def check_all_landed_once(stack: Stack, bodies: dict[str, bytes], payloads: dict[str, dict[str, Any]]) -> None:
    """Exact bytes for every object, each in exactly one tar member, and staging left empty."""
    assert set(payloads) == set(bodies)
    members: dict[tuple[str, int], int] = {}
    tar_cache: dict[str, bytes] = {}
    for key in stack.batch_keys():
        tar_cache[key] = stack.tar_bytes(key)
        for member in stack.members(key):
            members[(key, member.offset_data)] = members.get((key, member.offset_data), 0) + 1
    assert sum(members.values()) == len(bodies), "every object is in exactly one tar"

    for task_id, body in bodies.items():
        p = payloads[task_id]
        assert tar_cache[p["key"]][p["offset"] : p["offset"] + p["size"]] == body
        assert p["sha256"] == hashlib.sha256(body).hexdigest()
        assert members[(p["key"], p["offset"])] == 1
    # A batch killed after its results were published is cleaned up once its lease runs out: wait for that.
    deadline = time.monotonic() + 60
    while True:
        totals = stack.staging.totals()
        left = (totals["staged_bytes"], totals["batches_in_flight"], totals["dead_letters"])
        if left == (0, 0, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert left == (0, 0, 0)


def send(count: int, size: int, seed: int) -> tuple[dict[str, bytes], list[AsyncResult[Any]]]:
    from workers.tasks import put_object

    rng = random.Random(seed)
    bodies: dict[str, bytes] = {}
    results: list[AsyncResult[Any]] = []
    for i in range(count):
        body = rng.randbytes(rng.randint(0, size))
        result = put_object.delay(key_of(seed, i), body)
        bodies[result.id] = body
        results.append(result)
    return bodies, results


def key_of(seed: int, i: int) -> str:
    return f"crash/{seed}/{i:05d}"


def collect(results: list[AsyncResult[Any]], timeout_s: float = 120) -> dict[str, dict[str, Any]]:
    ResultSet(results).join_native(timeout=timeout_s)
    return {r.id: r.get(timeout=1) for r in results}


def collect_resending(
    results: list[AsyncResult[Any]], args: dict[str, tuple[str, bytes]], timeout_s: float = 45
) -> tuple[dict[str, dict[str, Any]], int]:
    """Results of tasks sent while workers were SIGKILLed, and how many had to be sent again.

    Celery's Redis transport loses a message that BRPOP has popped but the killed worker had not yet
    recorded as unacknowledged (kombu's known window); such a task stays PENDING after every
    unacknowledged message has come back. Staging is idempotent per task id, so the documented
    remedy, sending it again with the same task id, is safe.
    """
    from workers.tasks import put_object

    try:
        return collect(results, timeout_s=timeout_s), 0
    except Exception:
        lost = [r.id for r in results if AsyncResult(r.id).state == "PENDING"]
        for task_id in lost:
            put_object.apply_async(args[task_id], task_id=task_id)
        return collect([AsyncResult(r.id) for r in results], timeout_s=60), len(lost)


@pytest.mark.parametrize(
    ("point", "success_before_restart"),
    [
        ("claimed", "none"),
        ("tar-built", "none"),  # before the upload
        ("uploaded", "none"),  # in S3, results not yet published
        ("published-chunk", "some"),  # midway through publishing (2,500 objects = 3 chunks)
        ("marked-done", "all"),  # published, records not yet deleted
    ],
)
def test_sigkill_at_each_point_of_a_flush(stack: Stack, point: str, success_before_restart: str) -> None:
    sigkill_at(stack, point, success_before_restart)


@pytest.mark.s3_servers(
    "seaweedfs", reason="moto runs this point in test_sigkill_at_each_point_of_a_flush[uploaded-none]"
)
def test_sigkill_after_the_upload_before_publishing(stack: Stack) -> None:
    """The tar is in S3, no result is out: the next worker's upload meets the stored tar (412) and keeps it."""
    sigkill_at(stack, "uploaded", "none")


def sigkill_at(stack: Stack, point: str, success_before_restart: str) -> None:
    """Kill a worker at ``point`` of a 2,500-object flush, start another: every object lands once, no tar
    is overwritten."""
    count = 2500
    crashing = stack.start_worker(
        S3BATCH_CRASH_AT=point, S3BATCH_LEASE_SECONDS=2, S3BATCH_MAX_BATCH_AGE=120, S3BATCH_MAX_BATCH_OBJECTS=count
    )
    bodies, results = send(count, 600, seed=1)
    wait_dead(crashing)
    states = [AsyncResult(r.id).state for r in results]
    succeeded = states.count("SUCCESS")
    expected = {"none": succeeded == 0, "some": 0 < succeeded < count, "all": succeeded == count}
    assert expected[success_before_restart], (point, succeeded)
    before = tars(stack)
    stack.start_worker(S3BATCH_LEASE_SECONDS=2, S3BATCH_MAX_BATCH_AGE=1)
    payloads = collect(results)
    check_all_landed_once(stack, bodies, payloads)
    after = tars(stack)
    for key, head in before.items():
        assert after[key] == head, "a tar was overwritten"
    assert len(after) == 1 and {p["etag"] for p in payloads.values()} == {next(iter(after.values()))["etag"]}


@pytest.mark.s3_servers
def test_sigkill_in_the_middle_of_a_multipart_upload(stack: Stack) -> None:
    """A batch over the multipart threshold, staged directly; the worker dies after its first part."""
    from workers.app import app

    size = 4 * 1024 * 1024
    count = MULTIPART_THRESHOLD_BYTES // size + 3
    s = stack.settings
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for i, record_id in enumerate(ids):
        body = random.Random(i).randbytes(size)
        obj = StagedObject(record_id, f"big/{i}", body, int(time.time() * 1000), hashlib.sha256(body).hexdigest())
        stage_with(stack.staging, [obj], max_staged_bytes=2**31, max_batch_bytes=2**31, max_batch_objects=10**6)
    crashing = stack.start_worker(
        S3BATCH_CRASH_AT="part-uploaded", S3BATCH_LEASE_SECONDS=2, S3BATCH_MAX_BATCH_AGE=1,
        S3BATCH_MAX_BATCH_BYTES=2**31, S3BATCH_MAX_OBJECT_BYTES=size, S3BATCH_MAX_STAGED_BYTES=2**31,
    )  # fmt: skip
    wait_dead(crashing)
    assert stack.batch_keys() == []  # an incomplete multipart upload is no object
    stack.start_worker(
        S3BATCH_LEASE_SECONDS=2, S3BATCH_MAX_BATCH_AGE=1, S3BATCH_MAX_BATCH_BYTES=2**31,
        S3BATCH_MAX_OBJECT_BYTES=size, S3BATCH_MAX_STAGED_BYTES=2**31,
    )  # fmt: skip
    results: list[AsyncResult[Any]] = [AsyncResult(record_id, app=app) for record_id in ids]
    payloads = collect(results, timeout_s=180)
    assert {p["etag"] for p in payloads.values()} == {
        stack.s3.head_object(Bucket=s.require_bucket(), Key=payloads[ids[0]]["key"])["ETag"]
    }
    assert payloads[ids[0]]["etag"].strip('"').split("-")[1] == str(-(-count * size // (16 * 1024 * 1024)))
    for i in (0, count // 2, count - 1):
        p = payloads[ids[i]]
        got = stack.s3.get_object(Bucket=p["bucket"], Key=p["key"], Range=p["range"])["Body"].read()
        assert got == random.Random(i).randbytes(size)
    assert stack.staging.totals()["staged_bytes"] == 0


def test_randomized_kills_over_thousands_of_objects(stack: Stack) -> None:
    """Workers SIGKILLed at random moments while objects flow: every object lands exactly once."""
    env: dict[str, Any] = {"S3BATCH_LEASE_SECONDS": 2, "S3BATCH_MAX_BATCH_AGE": 1, "S3BATCH_MAX_BATCH_OBJECTS": 150}
    workers = [stack.start_worker(beat=True, **env), stack.start_worker(beat=False, **env)]
    rng = random.Random(5)
    sent: dict[str, bytes] = {}
    keys: dict[str, str] = {}
    results: list[AsyncResult[Any]] = []
    producer_done = threading.Event()

    def produce() -> None:
        for round_ in range(10):
            bodies, batch = send(300, 800, seed=100 + round_)
            sent.update(bodies)
            keys.update({r.id: key_of(100 + round_, i) for i, r in enumerate(batch)})
            results.extend(batch)
            time.sleep(0.3)
        producer_done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    kills = 0
    while not producer_done.is_set() or kills < 6:
        time.sleep(rng.uniform(0.5, 1.5))
        victim = rng.randrange(len(workers))
        workers[victim].kill()
        workers[victim].stop()
        kills += 1
        workers[victim] = stack.start_worker(beat=victim == 0, **env)
    producer.join()
    payloads, resent = collect_resending(results, {i: (keys[i], sent[i]) for i in sent})
    check_all_landed_once(stack, sent, payloads)
    print(
        f"\nrandomized kills: {kills} kills survived, {len(sent)} objects checked, 0 lost, "
        f"{resent} messages lost by the broker and resent with their task id"
    )


@pytest.mark.s3_servers
def test_stalled_flush_is_fenced_and_its_batch_finished_once(stack: Stack) -> None:
    """A flush frozen (SIGSTOP) past its lease: another worker finishes; the thawed one changes nothing."""
    count = 300
    frozen = stack.start_worker(
        S3BATCH_CRASH_AT="tar-built:1:stop", S3BATCH_LEASE_SECONDS=2, S3BATCH_MAX_BATCH_AGE=120,
        S3BATCH_MAX_BATCH_OBJECTS=count,
    )  # fmt: skip
    bodies, results = send(count, 500, seed=3)
    deadline = time.monotonic() + 30
    while "S3BATCH_CRASH_AT=tar-built:1:stop reached" not in frozen.log():
        assert time.monotonic() < deadline, frozen.log()[-2000:]
        time.sleep(0.05)
    stack.start_worker(S3BATCH_LEASE_SECONDS=2, S3BATCH_MAX_BATCH_AGE=1)
    payloads = collect(results)
    first = tars(stack)
    import signal

    frozen.kill(signal.SIGCONT)
    time.sleep(4)  # the thawed flush uploads (412, same bytes), publishes the same refs, loses the lease
    assert tars(stack) == first
    assert {r.id: AsyncResult(r.id).get(timeout=5) for r in results} == payloads
    check_all_landed_once(stack, bodies, payloads)
    assert "taken over meanwhile" in frozen.log() or "lost the lease" in frozen.log()


def test_sigterm_during_a_flush_finishes_it(stack: Stack) -> None:
    worker = stack.start_worker(
        S3BATCH_CRASH_AT="tar-built:1:sleep", S3BATCH_MAX_BATCH_AGE=120, S3BATCH_MAX_BATCH_OBJECTS=200
    )
    bodies, results = send(200, 500, seed=4)
    deadline = time.monotonic() + 30
    while "S3BATCH_CRASH_AT=tar-built:1:sleep reached" not in worker.log():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    import signal

    # As `docker stop` does: SIGTERM to the main process, whose warm shutdown lets the running flush
    # complete before the worker exits (systemd units want KillMode=mixed for the same reason).
    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait(timeout=30)
    assert all(AsyncResult(r.id).state == "SUCCESS" for r in results)
    payloads: dict[str, dict[str, Any]] = {r.id: AsyncResult(r.id).get(timeout=1) for r in results}
    check_all_landed_once(stack, bodies, payloads)


def test_worker_killed_with_prefetched_put_objects_loses_none(broker: Broker, stack: Stack) -> None:
    """SIGKILL a worker holding executing and prefetched put_objects: another stages every one of them.

    Redis: they come back after the 10 s visibility timeout (swept every 5 s). RabbitMQ gives them back as
    soon as the dead worker's connection closes, and never loses one, so nothing needs sending again."""
    first = stack.start_worker(S3BATCH_MAX_BATCH_AGE=1, concurrency=1)
    bodies, results = send(400, 300, seed=6)
    deadline = time.monotonic() + 30
    while sum(AsyncResult(r.id).state != "PENDING" for r in results[:50]) < 10:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    first.kill()  # with messages executing, prefetched and not yet delivered
    killed = time.monotonic()
    first.stop()
    stack.start_worker(S3BATCH_MAX_BATCH_AGE=1)
    keys = {r.id: key_of(6, i) for i, r in enumerate(results)}
    payloads, resent = collect_resending(results, {i: (keys[i], bodies[i]) for i in bodies})
    finished_s = time.monotonic() - killed
    check_all_landed_once(stack, bodies, payloads)
    if broker.is_rabbitmq:
        assert resent == 0, "RabbitMQ lost a message"
    print(f"\nprefetched messages [{broker.name}]: {len(bodies)} objects checked, 0 lost, {resent} resent with their "
          f"task id; all SUCCESS {finished_s:.1f} s after the SIGKILL")  # fmt: skip


def test_redis_restart_between_staging_and_flush_loses_nothing(stack: Stack, redis_server: RedisServer) -> None:
    worker = stack.start_worker(S3BATCH_MAX_BATCH_AGE=600)
    bodies, results = send(300, 700, seed=8)
    deadline = time.monotonic() + 30
    while any(AsyncResult(r.id).state != "STAGED" for r in results):  # type: ignore[comparison-overlap]  # celery-types omits custom states
        assert time.monotonic() < deadline
        time.sleep(0.1)
    worker.stop()
    redis_server.stop()  # SIGTERM: Redis writes its append-only file and exits
    redis_server.start()
    stack.start_worker(S3BATCH_MAX_BATCH_AGE=1)
    payloads = collect(results)
    check_all_landed_once(stack, bodies, payloads)
