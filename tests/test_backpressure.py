"""Staging refuses objects past MAX_STAGED_BYTES with a clear error; put_object retries instead of failing."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
from celery.result import AsyncResult, ResultSet

from batcher.config import Settings
from batcher.embedded import free_port
from batcher.errors import StagingError, StagingFullError
from batcher.lanes import Lanes
from batcher.partitions import default_partition
from batcher.producer import stage_object
from tests.factories import stage_with, staged
from tests.support import Stack


def test_full_staging_refuses_with_a_clear_error(stack: Stack) -> None:
    settings = replace(stack.settings, max_staged_bytes=1000, max_batch_bytes=1000, max_object_bytes=1000)
    lanes, partition = stack.lanes_for(settings), default_partition(settings)
    stage_object(lanes, partition, partition.lane(0), staged("first", b"x" * 900))
    with pytest.raises(StagingFullError, match=r"900 bytes staged, S3BATCH_MAX_STAGED_BYTES=1000; 'second'"):
        stage_object(lanes, partition, partition.lane(0), staged("second", b"y" * 200))
    assert stack.staging.totals()["queued_objects"] == 1


def test_redis_out_of_memory_is_a_staging_error_and_stages_nothing(stack: Stack) -> None:
    client = stack.staging.client
    partition = default_partition(stack.settings)
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + 64 * 1024)
    client.config_set("maxmemory-policy", "noeviction")
    try:
        with pytest.raises(StagingError, match=r"used memory > .maxmemory."):
            for i in range(100):
                stage_object(stack.lanes, partition, partition.lane(0), staged(f"k{i}", b"z" * 200_000))
        staged_count = stack.staging.totals()["queued_objects"]
        assert len(list(client.scan_iter(match="*:rec:*"))) == staged_count  # no half-staged object
    finally:
        client.config_set("maxmemory", 0)


def test_redis_unreachable_is_a_staging_error() -> None:
    settings = Settings(bucket="b-unreachable", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    staging = Lanes.for_settings(settings).staging(default_partition(settings).lane(0))
    with pytest.raises(StagingError, match="Redis refused to stage objects"):
        stage_with(staging, [staged("k", b"x")], max_staged_bytes=10, max_batch_bytes=10, max_batch_objects=10)


def test_producer_faster_than_uploads_is_held_back_and_loses_nothing(stack: Stack) -> None:
    from workers.tasks import put_object

    limits: dict[str, Any] = {
        "S3BATCH_MAX_STAGED_BYTES": 64 * 1024, "S3BATCH_MAX_BATCH_BYTES": 32 * 1024,
        "S3BATCH_MAX_OBJECT_BYTES": 4096, "S3BATCH_MAX_BATCH_AGE": 1,
    }  # fmt: skip
    # Only staging runs at first: no worker consumes the flush queue, so uploads cannot keep up at all.
    stack.start_worker(beat=False, queues="s3batch", **limits)
    bodies = {}
    results = []
    for i in range(60):
        body = bytes([i]) * 2048
        result = put_object.delay(f"bp/{i:03d}", body)
        bodies[result.id] = body
        results.append(result)
    deadline = time.monotonic() + 30
    while sum(AsyncResult(r.id).state == "RETRY" for r in results) < 10:
        assert time.monotonic() < deadline, [AsyncResult(r.id).state for r in results]
        time.sleep(0.1)
    assert stack.staging.totals()["staged_bytes"] <= 64 * 1024
    stack.start_worker(beat=True, queues="s3batch.flush", **limits)
    ResultSet(results).join_native(timeout=120)
    for result in results:
        payload = result.get()
        tar = stack.tar_bytes(payload["key"])
        assert tar[payload["offset"] : payload["offset"] + payload["size"]] == bodies[result.id]
    members = [m.name for key in stack.batch_keys() for m in stack.members(key)]
    assert sorted(members) == sorted(f"bp/{i:03d}" for i in range(60))
