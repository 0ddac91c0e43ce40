"""The flush in-process: real Redis staging, real S3 server, a publisher that records refs."""

from __future__ import annotations

import hashlib
import io
import itertools
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

import pytest

from batcher.flush import Flusher, batch_key
from batcher.index import INDEX_NAME, TRAILER_NAME
from batcher.models import BatchRef, ClaimedBatch, StagedObject
from batcher.partitions import default_partition
from batcher.producer import stage_object
from batcher.uploader import Uploader
from tests.factories import stage_with, staged
from tests.support import Stack


class Recorder:
    """A ResultSink that keeps what the flush reported."""

    def __init__(self) -> None:
        self.refs: dict[str, BatchRef] = {}
        self.failures: dict[str, Exception] = {}

    def publish(self, batch: ClaimedBatch, uploaded: Sequence[tuple[StagedObject, BatchRef]]) -> None:
        for head, ref in uploaded:
            assert head.record_id not in self.refs, f"{head.record_id} published twice"
            self.refs[head.record_id] = ref

    def fail(
        self, batch: ClaimedBatch, record_ids: Sequence[str], error: Exception, heads: Mapping[str, StagedObject]
    ) -> None:
        for record_id in record_ids:
            self.failures[record_id] = error


def make_flusher(stack: Stack, **settings: Any) -> tuple[Flusher, Recorder]:
    recorder = Recorder()
    chosen = replace(stack.settings, **settings)
    return Flusher(chosen, stack.lanes_for(chosen), Uploader(stack.s3), recorder), recorder


def stage(stack: Stack, objs: list[StagedObject]) -> None:
    s = stack.settings
    stage_with(
        stack.staging, objs, max_staged_bytes=s.max_staged_bytes, max_batch_bytes=10**12, max_batch_objects=10**9
    )


def test_batch_key_layout() -> None:
    assert batch_key("batches/", "01ABC", 1_764_000_000_000) == "batches/2025/11/24/16/01ABC.tar"


def test_flush_uploads_one_tar_with_exact_offsets(stack: Stack) -> None:
    objs = [staged(f"dir/{i}.bin", bytes([i % 256]) * size) for i, size in enumerate([0, 1, 511, 512, 513, 70_000])]
    stage(stack, objs)
    flusher, recorder = make_flusher(stack)
    reports = flusher.flush(force=True)
    assert len(reports) == 1 and reports[0].objects == len(objs)
    assert stack.batch_keys() == [reports[0].key]
    tar = stack.tar_bytes(reports[0].key)
    for obj in objs:
        ref = recorder.refs[obj.record_id]
        assert tar[ref.offset : ref.offset + ref.size] == obj.body
        assert ref.sha256 == hashlib.sha256(obj.body).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        assert archive.getnames() == [o.object_key for o in objs] + [INDEX_NAME, TRAILER_NAME]
    totals = stack.staging.totals()
    assert totals["staged_bytes"] == 0 and totals["batches_in_flight"] == 0
    # redis-py types replies as bytes | str; staging's client has decode_responses=False, so bytes
    names = [k.decode() for k in cast(list[bytes], stack.staging.client.keys("*"))]
    left = sorted(name.split(":")[2] for name in names if "{" in name)  # the lane's own keys
    assert left == ["epoch"] + ["seen"] * len(objs) + ["totals"]  # bodies and batch records are gone


def test_nothing_staged_means_no_put(stack: Stack) -> None:
    flusher, recorder = make_flusher(stack)
    assert flusher.flush(force=True) == []
    assert flusher.flush() == []
    assert stack.batch_keys() == [] and recorder.refs == {}


def test_batches_respect_byte_and_count_limits_and_order(stack: Stack) -> None:
    objs = [staged(f"o{i:04d}", bytes(100 + i % 50)) for i in range(300)]
    stage(stack, objs)
    flusher, recorder = make_flusher(stack, max_batch_bytes=5_000, max_batch_objects=40, max_object_bytes=1_000)
    reports = flusher.flush(force=True)
    assert sum(r.objects for r in reports) == 300
    assert all(r.size_bytes <= 5_000 and r.objects <= 40 for r in reports)
    order = [recorder.refs[o.record_id] for o in objs]
    # staging order is kept: batch ids grow, and offsets grow within a batch
    for before, after in itertools.pairwise(order):
        assert (before.batch_id, before.offset) < (after.batch_id, after.offset)


def test_rebuilt_batch_gives_the_same_tar(stack: Stack) -> None:
    """A crashed flush's batch, finished by another flush, has the same key, bytes and offsets."""
    objs = [staged(f"k{i}", bytes([i]) * 700, staged_ms=1_700_000_000_000 + i) for i in range(20)]
    stage(stack, objs)
    flusher, first = make_flusher(stack)
    batch = flusher.claim(force=True)
    assert batch is not None
    flusher.process(batch)
    original = stack.tar_bytes(batch.s3_key)
    # Simulate the dead flush's twin: the same records staged again under a fresh database.
    stack.staging.client.flushdb()
    stage(stack, objs)  # the same staging times: a record keeps the one it was staged with
    rules = stack.staging.with_limits(max_batch_age_ms=0, max_batch_objects=100, max_batch_bytes=10**9)
    again, _ = rules.claim(now_ms=batch.created_ms, batch_id=batch.batch_id, s3_key=batch.s3_key, force=True)
    assert again is not None
    _, second = make_flusher(stack)
    Flusher(stack.settings, stack.lanes, Uploader(stack.s3), second).process(again)
    assert stack.tar_bytes(batch.s3_key) == original
    assert {k: v.offset for k, v in first.refs.items()} == {k: v.offset for k, v in second.refs.items()}


def test_flush_without_bucket_is_a_config_error(stack: Stack) -> None:
    from batcher.errors import ConfigError

    with pytest.raises(ConfigError, match="S3BATCH_BUCKET"):
        Flusher(replace(stack.settings, bucket=None), stack.lanes, Uploader(stack.s3), Recorder())


def test_a_lowered_batch_age_applies_to_objects_already_staged(stack: Stack) -> None:
    patient = replace(stack.settings, max_batch_age_s=600)
    lanes = stack.lanes_for(patient)
    partition = default_partition(patient)
    stage_object(lanes, partition, partition.lane(0), staged("waits", b"w", staged_ms=int(time.time() * 1000) - 2000))
    assert Flusher(patient, lanes, Uploader(stack.s3), Recorder()).flush() == []  # 2 s old: not due at 600 s
    hurried, recorder = make_flusher(stack, max_batch_age_s=1)
    (flushed,) = hurried.flush()  # a worker restarted with S3BATCH_MAX_BATCH_AGE=1 uploads it on its first tick
    assert flushed.objects == 1 and recorder.refs["rec-waits"].object_key == "waits"
