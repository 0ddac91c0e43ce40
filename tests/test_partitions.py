"""Partitions: a bucket and prefix per call, never two in one tar, only allowed buckets; a boto3-shaped client;
thousands of partitions found without a scan."""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Any

import pytest

from batcher import BatchReader, BatchRef
from batcher.errors import InvalidBucketError, InvalidPrefixError, UnsupportedArgumentError
from batcher.flush import Flusher
from batcher.lanes import Lanes
from batcher.partitions import Partition, resolve
from batcher.producer import stage_object
from batcher.uploader import Uploader
from tests.factories import staged
from tests.support import Stack
from tests.test_flush import Recorder
from workers import Batcher, S3BatchClient
from workers.app import create_app
from workers.bulkwait import BulkResultSet


def tenants(stack: Stack, count: int) -> list[str]:
    """``count`` buckets of this test, created, named so that the pattern ``<base>-t*`` allows them."""
    names = [f"{stack.settings.require_bucket()[:50]}-t{i}" for i in range(count)]
    for name in names:
        stack.s3.create_bucket(Bucket=name)
    return names


def allowing(stack: Stack, **changes: Any) -> Any:
    return dataclasses.replace(stack.settings, buckets=f"{stack.settings.require_bucket()[:50]}-t*", **changes)


def test_buckets_must_be_valid_and_allowed() -> None:
    from batcher.config import Settings

    settings = Settings(bucket="main-bucket", buckets="tenant-*,main-bucket")
    assert resolve(settings) == Partition("main-bucket", "batches/")
    assert resolve(settings, "tenant-a", "logs/") == Partition("tenant-a", "logs/")
    with pytest.raises(InvalidBucketError, match=r"'other' is not allowed: S3BATCH_BUCKETS='tenant-\*,main-bucket'"):
        resolve(settings, "other")
    with pytest.raises(InvalidBucketError, match="not a valid S3 bucket name"):
        resolve(settings, "Tenant_A")
    with pytest.raises(InvalidPrefixError, match="must not start with '/'"):
        resolve(settings, "tenant-a", "/abs/")
    assert Settings(bucket="only").bucket_patterns == ["only"]  # the default: the default bucket alone


def test_three_buckets_two_prefixes_never_share_a_tar(stack: Stack) -> None:
    from workers.tasks import put_object

    buckets = tenants(stack, 3)
    settings = allowing(stack, max_batch_age_s=1)
    stack.start_worker(S3BATCH_BUCKETS=settings.buckets, S3BATCH_MAX_BATCH_AGE=1, concurrency=2)
    partitions = [(bucket, prefix) for bucket in buckets for prefix in ("logs/", "img/")]
    rng = random.Random(13)
    sent: list[tuple[str, str, str, bytes, Any]] = []
    app = create_app(settings)
    with Batcher(settings) as batcher:
        items = []
        for i in range(3000):
            bucket, prefix = partitions[i % len(partitions)]
            key, body = f"obj/{i:05d}", rng.randbytes(rng.randint(0, 300))
            if i % 3 == 0:
                sent.append(
                    (
                        bucket,
                        prefix,
                        key,
                        body,
                        app.tasks[put_object.name].delay(key, body, bucket=bucket, prefix=prefix),
                    )
                )
            else:
                items.append((bucket, prefix, key, body))
        direct = batcher.put_objects([{"key": k, "body": b, "bucket": bk, "prefix": p} for bk, p, k, b in items])
        sent += [(bk, p, k, b, r) for (bk, p, k, b), r in zip(items, direct.results or [], strict=True)]
        refused = batcher.put_objects([{"key": "nope", "body": b"x", "bucket": "not-allowed-here"}]).results or []
    values = BulkResultSet([r for *_, r in sent], app=app).join_native(timeout=180)
    reader = BatchReader(stack.s3)
    tars: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for (bucket, prefix, key, body, _), value in zip(sent, values, strict=True):
        ref = BatchRef.from_dict(value)
        assert ref.bucket == bucket and ref.key.startswith(prefix) and ref.object_key == key
        tars.setdefault((ref.bucket, ref.key), set()).add((bucket, prefix))
        assert reader.get(ref) == body
    assert all(len(partition) == 1 for partition in tars.values())  # one partition per tar
    assert {p for ps in tars.values() for p in ps} == set(partitions)
    with pytest.raises(InvalidBucketError, match="'not-allowed-here' is not allowed"):
        refused[0].get(timeout=10)
    assert stack.s3.list_objects_v2(Bucket=stack.settings.require_bucket()).get("KeyCount", 0) == 0


def test_the_boto3_shaped_client(stack: Stack, tmp_path: Any) -> None:
    bucket = tenants(stack, 1)[0]
    settings = allowing(stack)
    stack.start_worker(S3BATCH_BUCKETS=settings.buckets)
    client = S3BatchClient(settings, prefix="uploads/")
    try:
        result = client.put_object(Bucket=bucket, Key="a.png", Body=b"\x89PNG", ContentType="image/png",
                                   Metadata={"owner": "7"})  # fmt: skip
        path = tmp_path / "file.bin"
        path.write_bytes(b"from a file" * 100)
        with path.open("rb") as file:
            from_file = client.put_object(Bucket=bucket, Key="f.bin", Body=file)
        with pytest.raises(UnsupportedArgumentError) as refusal:
            client.put_object(Bucket=bucket, Key="k", Body=b"x", ACL="public-read", SSECustomerKey="k" * 32,
                              StorageClass="GLACIER", Colour="blue")  # fmt: skip
        message = str(refusal.value)
        for name in ("ACL: a batch is one S3 object", "SSECustomerKey: readers would need the customer key",
                     "StorageClass: the storage class is per batch", "Colour: not a PutObject parameter"):  # fmt: skip
            assert name in message
        with path.open("r") as text_file, pytest.raises(Exception, match="opened in text mode"):
            client.put_object(Bucket=bucket, Key="t", Body=text_file)
        ref = BatchRef.from_dict(result.get(timeout=60))
        assert (ref.bucket, ref.key.startswith("uploads/")) == (bucket, True)
        info = BatchReader(stack.s3).head(ref)
        assert (info.content_type, dict(info.metadata)) == ("image/png", {"owner": "7"})
        assert BatchReader(stack.s3).get(BatchRef.from_dict(from_file.get(timeout=60))) == b"from a file" * 100
    finally:
        client.close()


def command_count(client: Any) -> int:
    return int(client.info("stats")["total_commands_processed"])


def test_an_idle_tick_costs_the_same_with_ten_or_two_thousand_partitions(stack: Stack) -> None:
    lanes = Lanes(stack.lanes.client, stack.settings)
    flusher = Flusher(stack.settings, lanes, Uploader(stack.s3), Recorder())
    costs = []
    for total in (10, 2000):
        for i in range(len(lanes.all()), total):  # partitions that staged once and are idle now
            partition = Partition(stack.settings.require_bucket(), f"idle/{i}/")
            lanes.register(partition, partition.lane(0))
        flusher.flush()  # the once-a-minute sweep and probe turns are taken here, not in the idle ticks below
        before = command_count(lanes.client)
        for _ in range(10):
            assert flusher.flush() == []
        costs.append((command_count(lanes.client) - before) / 10)
    print(f"\nRedis commands per idle tick: {costs[0]:.1f} with 10 partitions, {costs[1]:.1f} with 2,000")
    assert costs[1] == costs[0] and costs[1] <= 6


def test_the_first_tick_after_the_age_uploads_every_one_of_two_thousand_partitions(stack: Stack) -> None:
    settings = dataclasses.replace(stack.settings, max_batch_age_s=1)
    lanes = stack.lanes_for(settings)
    flusher = Flusher(settings, lanes, Uploader(stack.s3), recorder := Recorder())
    bucket = settings.require_bucket()
    for i in range(2000):
        partition = Partition(bucket, f"p/{i:04d}/")
        stage_object(lanes, partition, partition.lane(0), staged(f"k{i}", b"%d" % i, record_id=f"r{i}"))
    time.sleep(1.1)  # the age of the last one
    flushed = flusher.flush()  # one tick
    assert len(flushed) == 2000 and all(batch.error is None and batch.objects == 1 for batch in flushed)
    assert len(recorder.refs) == 2000 and lanes.due(int(time.time() * 1000) + 10_000) == []
    ref = recorder.refs["r1234"]
    assert ref.key.startswith("p/1234/") and BatchReader(stack.s3).get(ref) == b"1234"


def test_two_thousand_partitions_of_one_object_each_are_all_uploaded_in_time(stack: Stack) -> None:
    settings = dataclasses.replace(stack.settings, max_batch_age_s=3)
    stack.start_worker(S3BATCH_MAX_BATCH_AGE=3, concurrency=2)
    stack.start_worker(S3BATCH_MAX_BATCH_AGE=3, concurrency=2, beat=False)
    bucket = stack.settings.require_bucket()
    with Batcher(settings) as batcher:
        started = time.time()
        results = batcher.put_objects({"key": "one", "body": b"%d" % i, "prefix": f"p/{i:04d}/"} for i in range(2000))
        staged_s = time.time() - started
        values = results.join_native(timeout=300)
    done_s = time.time() - started
    refs = [BatchRef.from_dict(v) for v in values]
    assert len({ref.key for ref in refs}) == 2000 and all(ref.bucket == bucket for ref in refs)
    created = [BatchReader(stack.s3).index(ref.bucket, ref.key).created for ref in refs[::100]]
    print(f"\n2,000 partitions: staged in {staged_s:.1f} s, all uploaded {done_s:.1f} s after the first was sent "
          f"(batch age 3 s); sampled batches created at {created[0]} .. {created[-1]}")  # fmt: skip
    assert BatchReader(stack.s3).get(refs[1234]) == b"1234"
