"""Staging on any Redis topology: a Redis Cluster (lanes spread over its masters, a worker killed mid-flush, a
slot migration while staging) and a Sentinel group (a failover while staging, with and without replicas)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.crc import key_slot

from batcher import BatchReader, BatchRef
from batcher.config import Settings
from batcher.errors import ConfigError, S3BatchError
from batcher.partitions import Partition
from tests.services.rediscluster import RedisCluster
from tests.services.sentinel import RedisSentinel
from tests.support import Stack
from workers import Batcher

LANES = 8


@pytest.fixture
def cluster(redis_server: object) -> Iterator[RedisCluster]:
    with RedisCluster(masters=3) as started:
        yield started


def spread_prefix(settings: Settings, cluster: RedisCluster) -> str:
    """A prefix whose 8 lanes have keys on every master (a lane's keys live in the slot of its hash tag)."""
    masters = cluster.masters()
    for n in range(1000):
        partition = Partition(settings.require_bucket(), f"spread{n}/")
        slots = [key_slot(partition.lane(i).encode()) for i in range(LANES)]
        owners = {m.id for m in masters for s in slots if any(a <= s <= b for a, b in m.slots)}
        if len(owners) == len(masters):
            return partition.prefix
    raise AssertionError("no prefix spreads 8 lanes over every master")


def in_staging_order(refs: list[BatchRef]) -> bool:
    """One lane's objects: each batch holds a contiguous run of them, at increasing offsets."""
    seen: set[str] = set()
    for before, ref in zip([None, *refs], refs, strict=False):
        if before is not None and before.batch_id == ref.batch_id:
            if ref.offset <= before.offset:
                return False
        elif ref.batch_id in seen:
            return False
        seen.add(ref.batch_id)
    return True


def test_a_redis_cluster_stages_eight_lanes_over_its_masters(stack: Stack, cluster: RedisCluster) -> None:
    prefix = spread_prefix(stack.settings, cluster)
    settings = dataclasses.replace(
        stack.settings, redis_url=cluster.url, lanes=LANES, prefix=prefix, max_batch_age_s=2, max_batch_objects=400
    )
    env: dict[str, Any] = {"S3BATCH_REDIS_URL": cluster.url, "S3BATCH_LANES": LANES, "S3BATCH_PREFIX": prefix,
           "S3BATCH_MAX_BATCH_AGE": 2, "S3BATCH_MAX_BATCH_OBJECTS": 400, "S3BATCH_LEASE_SECONDS": 3}  # fmt: skip
    crashing = stack.start_worker(beat=False, S3BATCH_CRASH_AT="uploaded:3", **env)  # dies before its 3rd publish
    stack.start_worker(**env)
    per_lane = 1250
    results: dict[int, Any] = {}
    bodies = {lane: [b"%d:%d" % (lane, i) * (1 + i % 40) for i in range(per_lane)] for lane in range(LANES)}

    def produce(lane: int) -> None:
        with Batcher(settings, lane=lane) as batcher:
            results[lane] = batcher.put_objects((f"l{lane}/{i:05d}", body) for i, body in enumerate(bodies[lane]))

    producers = [threading.Thread(target=produce, args=(lane,)) for lane in range(LANES)]
    for producer in producers:
        producer.start()
    masters = cluster.masters()
    cluster.reshard(300, masters[0], masters[1])  # a slot migration while the producers stage
    for producer in producers:
        producer.join()
    on_masters = {
        m.port: sum(1 for _ in cluster.client(m.port).scan_iter(match="s3batch:{*", count=1000)) for m in masters
    }
    assert all(on_masters.values()), on_masters  # every master holds lanes
    refs = {lane: [BatchRef.from_dict(v) for v in results[lane].join_native(timeout=240)] for lane in range(LANES)}
    assert crashing.process.poll() is not None, "the crashing worker never reached its crash point"
    reader = BatchReader(stack.s3)
    members: list[tuple[str, int]] = []
    for lane in range(LANES):
        assert reader.get_many(refs[lane]) == bodies[lane]  # none lost, exact bytes
        assert in_staging_order(refs[lane])
        assert {ref.batch_id.rsplit("-", 1)[1] for ref in refs[lane]} == {str(lane)}  # the batch id names the lane
    for key in stack.batch_keys():
        members += [(key, m.offset_data) for m in stack.members(key)]
    assert len(members) == len(set(members)) == LANES * per_lane  # none in two tars


def test_a_batcher_whose_results_would_go_to_the_cluster_refuses_to_start(
    stack: Stack, cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = dataclasses.replace(stack.settings, redis_url=cluster.url, max_batch_age_s=7)
    with pytest.raises(ConfigError, match="S3BATCH_STAGING_REPLICAS needs one connection to a master"):
        Batcher(dataclasses.replace(settings, staging_replicas=1))
    monkeypatch.setenv("CELERY_RESULT_BACKEND", cluster.url)  # as when it is left to default to the staging Redis
    with pytest.raises(ConfigError, match=r"CELERY_RESULT_BACKEND=.* is a Redis Cluster node: Celery's Redis"):
        Batcher(settings)


def test_sentinel_failover_with_staging_replicas_loses_nothing_reported_staged(stack: Stack) -> None:
    with RedisSentinel() as group:
        staged, refused = failover_while_staging(stack, group, replicas=1)
        values = {k: r.get(timeout=60) for k, r in staged.items()}
    reader = BatchReader(stack.s3)
    assert all(reader.get(BatchRef.from_dict(v)) == k.encode() for k, v in values.items())
    print(f"\nSentinel failover, S3BATCH_STAGING_REPLICAS=1: {len(staged)} objects reported STAGED, all landed; "
          f"{refused} refused while the failover ran")  # fmt: skip


def test_sentinel_failover_without_replicas_loses_at_most_the_last_writes(stack: Stack) -> None:
    with RedisSentinel() as group:
        staged, _ = failover_while_staging(stack, group, replicas=0)
        lost = []
        for key, result in staged.items():
            try:
                result.get(timeout=120)
            except S3BatchError as exc:
                lost.append((key, type(exc).__name__))
    print(f"\nSentinel failover without replicas: {len(lost)} of {len(staged)} objects reported STAGED were lost, "
          "each reported as lost")  # fmt: skip
    assert all(name == "StagingLostError" for _, name in lost)  # every loss is said, none is silent
    assert len(lost) <= 50  # asynchronous replication: at most the writes of the last moments before the kill


def failover_while_staging(stack: Stack, group: RedisSentinel, *, replicas: int) -> tuple[dict[str, Any], int]:
    """Stage objects one by one while the master is killed; the handles of those reported STAGED, and how many
    were refused during the failover."""
    settings = dataclasses.replace(
        stack.settings, redis_url=group.url, redis_sentinel_master=group.master_name, staging_replicas=replicas,
        max_batch_age_s=1,
    )  # fmt: skip
    stack.start_worker(S3BATCH_REDIS_URL=group.url, S3BATCH_REDIS_SENTINEL_MASTER=group.master_name,
                       S3BATCH_STAGING_REPLICAS=replicas, S3BATCH_MAX_BATCH_AGE=1)  # fmt: skip
    staged: dict[str, Any] = {}
    refused = 0
    stop = threading.Event()

    def produce() -> None:
        nonlocal refused
        with Batcher(settings) as batcher:
            i = 0
            while not stop.is_set():
                key = f"failover/{i:05d}"
                try:
                    staged[key] = batcher.put_object(key, key.encode())
                except S3BatchError:  # StagingError while the failover runs, never a raw Redis error
                    refused += 1
                    time.sleep(0.05)
                i += 1

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(1.5)
    old = group.kill_master()
    group.wait_for_failover()
    group.restart(old[1])  # back as a replica: WAIT has a replica to count again
    time.sleep(2)
    stop.set()
    producer.join(30)
    return staged, refused
