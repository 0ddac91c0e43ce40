"""BatchReader against moto and SeaweedFS: requests counted at the client, exact bytes, specific errors."""

from __future__ import annotations

import hashlib
import random
import tarfile
import time
import tracemalloc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from batcher import BatchReader, BatchRef
from batcher.errors import (
    BatchNotFoundError,
    ChecksumMismatchError,
    CorruptedBatchError,
    InvalidRefError,
    MemoryLimitError,
    S3BatchError,
)
from batcher.flush import Flusher
from batcher.index import location_from_metadata
from batcher.models import ClaimedBatch, StagedObject
from batcher.reader import MAX_PROBLEMS, TAIL_BYTES
from batcher.tarwriter import build_tar
from batcher.uploader import Uploader
from tests.factories import stage_with
from tests.hostile import craft
from tests.support import Stack

pytestmark = pytest.mark.s3_servers  # every test here on moto and on SeaweedFS (tests/s3backends.py)
CREATED_MS = 1_700_000_000_000


def obj(
    key: str, body: bytes, n: int, content_type: str | None = None, metadata: dict[str, str] | None = None
) -> StagedObject:
    return StagedObject(
        f"rec-{n}", key, body, CREATED_MS - 1000 + n, hashlib.sha256(body).hexdigest(), content_type, metadata or {}
    )


def upload(stack: Stack, key: str, items: Sequence[StagedObject | bytes], batch_id: str = "01JB1") -> list[BatchRef]:
    """Build a batch of ``items`` (or of bodies named o0, o1...) with build_tar, upload it, return its refs."""
    objs = [o if isinstance(o, StagedObject) else obj(f"o{i}", o, i) for i, o in enumerate(items)]
    bucket = stack.settings.bucket or ""
    with build_tar([o.object_key for o in objs], objs, batch_id=batch_id, created_ms=CREATED_MS) as tar:
        etag = Uploader(stack.s3).upload(bucket, key, tar)
    return [BatchRef(bucket, key, m.offset, m.size, m.key, batch_id, etag, m.sha256) for m in tar.members]


class Sink:
    """The flush's ResultSink: the refs the producers get, by record id."""

    def __init__(self) -> None:
        self.refs: dict[str, BatchRef] = {}

    def publish(self, batch: ClaimedBatch, uploaded: Sequence[tuple[StagedObject, BatchRef]]) -> None:
        self.refs.update((head.record_id, ref) for head, ref in uploaded)

    def fail(
        self, batch: ClaimedBatch, record_ids: Sequence[str], error: Exception, heads: Mapping[str, StagedObject]
    ) -> None:
        raise AssertionError(f"flush failed: {error}")


def flush(stack: Stack, objs: list[StagedObject], **settings: Any) -> list[BatchRef]:
    """Stage ``objs`` and flush them as the workers do; the refs the producers got, in staging order."""
    stage_with(stack.staging, objs, max_staged_bytes=10**12, max_batch_bytes=10**12, max_batch_objects=10**9)
    sink = Sink()
    chosen = replace(stack.settings, **settings)
    Flusher(chosen, stack.lanes_for(chosen), Uploader(stack.s3), sink).flush(force=True)
    return [sink.refs[o.record_id] for o in objs]


def sample(count: int, seed: int) -> list[StagedObject]:
    rng = random.Random(seed)
    types = [None, "image/png", "application/json"]
    return [
        obj(f"s{seed}/{i:05d}.bin", rng.randbytes(rng.choice([0, 1, 100, 511, 512, 513, 4000])), i,
            types[i % 3], {"n": str(i)} if i % 5 == 0 else None)
        for i in range(count)
    ]  # fmt: skip


@dataclass
class Traffic:
    """Every request the client sends: headers, and the body bytes of each GetObject answer."""

    requests: list[dict[str, str]] = field(default_factory=list)
    get_bytes: list[int] = field(default_factory=list)

    @property
    def ranges(self) -> list[str | None]:
        return [r.get("Range") for r in self.requests]


def traffic(client: Any) -> Traffic:
    seen = Traffic()

    def before_send(request: Any, **_: Any) -> None:
        seen.requests.append({k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()})

    def after_get(parsed: Any, **_: Any) -> None:
        seen.get_bytes.append(int(parsed.get("ContentLength", 0)))

    client.meta.events.register("before-send.s3", before_send)
    client.meta.events.register("after-call.s3.GetObject", after_get)
    return seen


def no_multi_range(seen: Traffic) -> bool:
    return all("," not in (r or "") for r in seen.ranges)


# ---- get ----


def test_get_is_one_ranged_get(stack: Stack) -> None:
    refs = upload(stack, "r/1.tar", [b"alpha", b"", b"gamma" * 1000])
    seen = traffic(stack.s3)
    reader = BatchReader(stack.s3)
    assert reader.get(refs[0]) == b"alpha"
    assert seen.ranges == [refs[0].range]
    assert reader.get(refs[1]) == b""
    assert len(seen.requests) == 1  # an empty object needs no request
    assert reader.get(refs[2]) == b"gamma" * 1000


def test_missing_batch(stack: Stack) -> None:
    (ref,) = upload(stack, "r/2.tar", [b"x"])
    reader = BatchReader(stack.s3)
    gone = replace(ref, key="r/none.tar")
    for read in (
        lambda: reader.get(gone),
        lambda: reader.get(replace(ref, bucket="no-such-bucket-s3batch")),
        lambda: reader.get_many([ref, gone]),
        lambda: reader.index(ref.bucket, gone.key),
        lambda: list(reader.iter_batch(ref.bucket, gone.key)),
        lambda: reader.head(gone),
        lambda: reader.verify(ref.bucket, gone.key),
    ):
        with pytest.raises(BatchNotFoundError, match="does not exist"):
            read()


def test_bad_refs(stack: Stack) -> None:
    reader = BatchReader(stack.s3)
    with pytest.raises(InvalidRefError):
        reader.get({"bucket": "b"})  # type: ignore[arg-type]
    with pytest.raises(InvalidRefError):
        reader.get_many([{"bucket": "b"}])  # type: ignore[list-item]
    first, second = upload(stack, "r/4.tar", [b"x", b"y" * 600])
    with pytest.raises(InvalidRefError, match="outside"):
        reader.get(replace(first, offset=10**9))
    with pytest.raises(InvalidRefError, match="not where a tar member's data starts"):
        reader.head(replace(first, offset=first.offset + 1))
    with pytest.raises(InvalidRefError, match="not where a tar member's data starts"):
        reader.head(replace(second, offset=second.offset + 512))  # inside the data: no header before it
    with pytest.raises(InvalidRefError, match="not the ref's"):
        reader.head(replace(second, offset=first.offset))
    with pytest.raises(ValueError, match="gap_bytes"):
        BatchReader(stack.s3, gap_bytes=-1)


# ---- index ----


def test_index_of_ten_thousand_objects_is_two_gets_and_the_producers_refs(stack: Stack) -> None:
    objs = sample(10_000, seed=1)
    produced = flush(stack, objs)
    bucket, key = produced[0].bucket, produced[0].key
    assert {(ref.bucket, ref.key) for ref in produced} == {(bucket, key)}  # one batch
    seen = traffic(stack.s3)
    index = BatchReader(stack.s3).index(bucket, key)
    assert index.refs == produced
    assert len(seen.requests) == 2 and seen.ranges[0] == f"bytes=-{TAIL_BYTES}"
    assert no_multi_range(seen) and seen.requests[1]["If-Match"] == produced[0].etag
    assert [(i.content_type, dict(i.metadata)) for i in index.objects] == [
        (o.content_type, dict(o.metadata)) for o in objs
    ]
    assert (index.batch_id, len(index.objects), index.format) == (produced[0].batch_id, 10_000, 1)
    assert index.writer == "s3batch format 1" and index.created.endswith("Z")
    head = stack.s3.head_object(Bucket=bucket, Key=key)  # the other way to find the index
    location = location_from_metadata(head["Metadata"])
    assert location is not None and location.size > TAIL_BYTES  # the index did not fit in the first GET
    assert sum(seen.get_bytes) == head["ContentLength"] - location.offset  # from the index on, each byte once


def test_index_of_a_small_batch_is_one_get(stack: Stack) -> None:
    refs = upload(stack, "r/small.tar", sample(100, seed=2), batch_id="01JSMALL")
    seen = traffic(stack.s3)
    index = BatchReader(stack.s3).index(refs[0].bucket, "r/small.tar")
    assert index.refs == refs and index.batch_id == "01JSMALL"
    assert seen.ranges == [f"bytes=-{TAIL_BYTES}"]


def test_index_needs_an_s3batch_trailer(stack: Stack, tmp_path: Path) -> None:
    bucket = stack.settings.require_bucket()
    plain = tmp_path / "plain.tar"
    (tmp_path / "file").write_bytes(b"not a batch")
    with tarfile.open(plain, "w") as tar:
        tar.add(tmp_path / "file", arcname="file")
    stack.s3.put_object(Bucket=bucket, Key="r/plain.tar", Body=plain.read_bytes())
    reader = BatchReader(stack.s3)
    with pytest.raises(CorruptedBatchError, match="not an s3batch trailer"):
        reader.index(bucket, "r/plain.tar")
    upload(stack, "r/whole.tar", [b"a", b"b"] * 20)
    data = stack.tar_bytes("r/whole.tar")
    assert len(data) > tarfile.RECORDSIZE  # cut, it still has bytes
    stack.s3.put_object(Bucket=bucket, Key="r/cut.tar", Body=data[: len(data) - tarfile.RECORDSIZE])
    with pytest.raises(CorruptedBatchError):
        reader.index(bucket, "r/cut.tar")
    # An empty object: moto answers the suffix range with no bytes, SeaweedFS (like AWS) with 416; either way
    # the object is no batch, not a bad ref.
    stack.s3.put_object(Bucket=bucket, Key="r/empty.tar", Body=b"")
    with pytest.raises(CorruptedBatchError):
        reader.index(bucket, "r/empty.tar")


def test_damaged_index_is_detected(stack: Stack) -> None:
    refs = upload(stack, "r/idx.tar", [b"one", b"two"])
    data = bytearray(stack.tar_bytes("r/idx.tar"))
    at = bytes(data).index(b'"o1"')  # a key inside the index member's JSON
    data[at + 2] = ord("X")
    bucket = refs[0].bucket
    stack.s3.put_object(Bucket=bucket, Key="r/idx.tar", Body=bytes(data))
    reader = BatchReader(stack.s3)
    with pytest.raises(CorruptedBatchError, match="does not match the SHA-256 in its trailer"):
        reader.index(bucket, "r/idx.tar")
    check = reader.verify(bucket, "r/idx.tar")
    assert not check.ok and "trailer" in check.problems[0]


# ---- get_many ----


@pytest.fixture
def five_batches(stack: Stack) -> tuple[list[StagedObject], list[BatchRef]]:
    objs = sample(2000, seed=3)
    refs = flush(stack, objs, max_batch_objects=400)
    assert len({ref.key for ref in refs}) == 5
    return objs, refs


def test_get_many_near_objects_is_one_get_per_batch(
    stack: Stack, five_batches: tuple[list[StagedObject], list[BatchRef]]
) -> None:
    objs, refs = five_batches
    picked = list(range(0, 2000, 2))  # 1,000 refs, every other object: gaps of one member
    random.Random(4).shuffle(picked)
    seen = traffic(stack.s3)
    got = BatchReader(stack.s3).get_many([refs[n] for n in picked])
    assert got == [objs[n].body for n in picked]
    assert len(seen.requests) == 5 and no_multi_range(seen)


def test_get_many_far_objects_is_one_get_per_object(
    stack: Stack, five_batches: tuple[list[StagedObject], list[BatchRef]]
) -> None:
    objs, refs = five_batches
    picked = list(range(0, 2000, 2))
    seen = traffic(stack.s3)
    got = BatchReader(stack.s3, gap_bytes=1024).get_many([refs[n] for n in picked])  # every gap is > 3 KiB
    assert got == [objs[n].body for n in picked]
    assert len(seen.requests) == sum(1 for n in picked if refs[n].size) and no_multi_range(seen)
    assert sorted(r for r in seen.ranges if r) == sorted(refs[n].range for n in picked if refs[n].size)


def test_get_many_handles_repeats_neighbours_and_empty_objects(stack: Stack) -> None:
    bodies = [b"a" * 700, b"", b"c" * 10, b"d" * 5000]
    refs = upload(stack, "r/many.tar", bodies)
    asked = [refs[3], refs[0], refs[1], refs[0], refs[2], refs[3]]
    seen = traffic(stack.s3)
    assert BatchReader(stack.s3, gap_bytes=0).get_many(asked) == [
        bodies[3],
        bodies[0],
        b"",
        bodies[0],
        bodies[2],
        bodies[3],
    ]
    assert len(seen.requests) == 3  # gap 0: members are never adjacent (headers between), repeats are read once
    assert BatchReader(stack.s3).get_many([]) == []


# ---- iter_batch and head ----


def test_iter_batch_streams_every_object_with_its_ref_in_one_get(stack: Stack) -> None:
    objs = sample(300, seed=5)
    refs = upload(stack, "batches/2025/01/01/00/01JSTREAM.tar", objs, batch_id="01JSTREAM")
    seen = traffic(stack.s3)
    streamed = list(BatchReader(stack.s3).iter_batch(refs[0].bucket, refs[0].key))
    assert [info.ref for info, _ in streamed] == refs
    assert [data for _, data in streamed] == [o.body for o in objs]
    assert [(i.content_type, dict(i.metadata)) for i, _ in streamed] == [(o.content_type, o.metadata) for o in objs]
    assert len(seen.requests) == 1 and "Range" not in seen.requests[0]


def test_head_gives_content_type_and_metadata_from_one_small_get(stack: Stack) -> None:
    widest_key = "\x01" * 1024  # every byte escaped in the name (3x) and in the JSON (6x)
    widest_metadata = {"k": "\x02" * 2046}  # S3's 2 KiB, JSON-escaped 6x
    objs = [
        obj("plain", b"p", 0),
        obj(widest_key, b"w" * 10, 1, "x/" + "y" * 254, widest_metadata),
        obj("typed", b"{}", 2, "application/json", {"owner": "alice"}),
    ]
    refs = upload(stack, "r/head.tar", objs)
    reader = BatchReader(stack.s3)
    seen = traffic(stack.s3)
    infos = [reader.head(ref) for ref in refs]
    assert [(i.ref, i.content_type, dict(i.metadata)) for i in infos] == [
        (ref, o.content_type, o.metadata) for ref, o in zip(refs, objs, strict=True)
    ]
    assert infos[0].name == "plain" and infos[1].name.startswith("%01%01")
    assert len(seen.requests) == 3 and max(seen.get_bytes) <= 32 * 1024


# ---- damage ----


def test_corrupted_byte_is_detected(stack: Stack) -> None:
    refs = upload(stack, "r/3.tar", [b"precious bytes", b"more"])
    ref = refs[0]
    data = bytearray(stack.tar_bytes("r/3.tar"))
    data[ref.offset + 3] ^= 0xFF
    stack.s3.put_object(Bucket=ref.bucket, Key=ref.key, Body=bytes(data))
    reader = BatchReader(stack.s3)
    with pytest.raises(ChecksumMismatchError, match="does not match its sha256"):
        reader.get(ref)
    assert reader.get(ref, verify=False) != b"precious bytes"
    with pytest.raises(ChecksumMismatchError):
        reader.get_many(refs)
    with pytest.raises(ChecksumMismatchError):
        list(reader.iter_batch(ref.bucket, ref.key))
    check = reader.verify(ref.bucket, ref.key)
    assert (check.ok, check.objects, len(check.problems)) == (False, 2, 1)
    assert "'o0'" in check.problems[0] and ref.range in check.problems[0]


def test_verify_detects_a_damaged_header_and_passes_an_intact_batch(stack: Stack) -> None:
    refs = upload(stack, "r/hdr.tar", [b"a" * 100, b"b" * 100, b"c" * 100])
    reader = BatchReader(stack.s3)
    intact = reader.verify(refs[0].bucket, refs[0].key)
    assert intact.ok and intact.objects == 3 and intact.bytes_read == len(stack.tar_bytes("r/hdr.tar"))
    data = bytearray(stack.tar_bytes("r/hdr.tar"))
    data[refs[1].offset - 512 + 100] ^= 0x01  # the mode field of the second object's ustar header
    stack.s3.put_object(Bucket=refs[0].bucket, Key="r/hdr.tar", Body=bytes(data))
    damaged = reader.verify(refs[0].bucket, "r/hdr.tar")
    assert (damaged.ok, damaged.objects) == (False, 1) and "bad checksum" in damaged.problems[0]
    with pytest.raises(CorruptedBatchError):
        list(reader.iter_batch(refs[0].bucket, "r/hdr.tar"))


def test_padding_damage_fails_the_tar_digest(stack: Stack) -> None:
    refs = upload(stack, "r/pad.tar", [b"a"])
    data = bytearray(stack.tar_bytes("r/pad.tar"))
    data[-1] = 1  # record padding after the end-of-archive blocks: no member covers it
    bucket = refs[0].bucket
    head = stack.s3.head_object(Bucket=bucket, Key="r/pad.tar")
    stack.s3.put_object(Bucket=bucket, Key="r/pad.tar", Body=bytes(data), Metadata=head["Metadata"])
    check = BatchReader(stack.s3).verify(bucket, "r/pad.tar")
    assert check.problems == [check.problems[0]] and "uploaded as" in check.problems[0]


# ---- bounded memory ----

MiB = 1024 * 1024


def traced_peak(call: Any) -> tuple[Any, int]:
    """What ``call()`` returns or raises, and the tracemalloc peak while it ran, in bytes."""
    tracemalloc.start()
    try:
        try:
            result = call()
        except S3BatchError as exc:
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_max_memory_bytes_must_be_sensible(stack: Stack) -> None:
    assert BatchReader(stack.s3).max_memory_bytes == 64 * MiB
    for bad in (-1, 0, TAIL_BYTES - 1, 1.5, None):
        with pytest.raises(ValueError, match="max_memory_bytes"):
            BatchReader(stack.s3, max_memory_bytes=bad)  # type: ignore[arg-type]


@pytest.fixture
def big_batch(stack: Stack) -> list[BatchRef]:
    """Three objects of 8 MiB: a 24 MiB tar, whose download would show in time and memory."""
    return upload(stack, "r/big.tar", [bytes([n]) * 8 * MiB for n in range(3)])


def test_a_ref_larger_than_the_tar_fails_before_its_body_is_read(stack: Stack, big_batch: list[BatchRef]) -> None:
    huge = replace(big_batch[0], size=10**12)
    seen = traffic(stack.s3)
    with pytest.raises(MemoryLimitError, match="max_memory_bytes"):
        BatchReader(stack.s3).get(huge)  # over the default limit: no request at all
    with pytest.raises(MemoryLimitError):
        BatchReader(stack.s3).get_many([big_batch[1], huge])
    assert seen.requests == []
    unlimited = BatchReader(stack.s3, max_memory_bytes=10**13)
    for call in (lambda: unlimited.get(huge), lambda: unlimited.get_many([huge, big_batch[1]])):
        started = time.perf_counter()
        error, peak = traced_peak(call)
        assert isinstance(error, InvalidRefError) and "runs past the end of the tar" in str(error), error
        assert peak < 2 * MiB and time.perf_counter() - started < 1  # the 24 MiB behind the offset were not read
    assert unlimited.get_many(big_batch[1:]) == [b"\1" * 8 * MiB, b"\2" * 8 * MiB]


def test_get_many_counts_each_distinct_object_once(stack: Stack, big_batch: list[BatchRef]) -> None:
    reader = BatchReader(stack.s3, max_memory_bytes=20 * MiB)
    repeated = reader.get_many([big_batch[0], big_batch[1], big_batch[0]])
    assert repeated[0] is repeated[2]  # one bytes object for both refs
    with pytest.raises(MemoryLimitError, match="3 distinct objects"):
        reader.get_many(big_batch)


def test_an_index_larger_than_the_limit_is_refused_after_one_get(stack: Stack) -> None:
    bucket = stack.settings.bucket or ""
    stack.s3.put_object(Bucket=bucket, Key="r/idx.tar", Body=craft([], index=b"x" * 3 * MiB))
    seen = traffic(stack.s3)
    with pytest.raises(MemoryLimitError, match=r"the index of s3://.* \(3,145,728 bytes\)"):
        BatchReader(stack.s3, max_memory_bytes=2 * MiB).index(bucket, "r/idx.tar")
    assert len(seen.requests) == 1 and sum(seen.get_bytes) == TAIL_BYTES


def test_verify_streams_and_iter_batch_holds_one_object(stack: Stack) -> None:
    refs = upload(stack, "r/one.tar", [b"s" * 100, b"\7" * 24 * MiB, b"t" * 100])
    bucket, key = refs[0].bucket, refs[0].key
    check, peak = traced_peak(lambda: BatchReader(stack.s3).verify(bucket, key))
    assert check.ok and peak < 4 * MiB  # 1 MiB chunks, never the 24 MiB object
    small = BatchReader(stack.s3, max_memory_bytes=16 * MiB)
    seen: list[str] = []
    with pytest.raises(MemoryLimitError, match=r"'o1' \(25,165,824 bytes\)"):
        seen.extend(info.ref.object_key for info, _ in small.iter_batch(bucket, key))
    assert seen == ["o0"]
    assert small.verify(bucket, key).ok  # verify holds no object, whatever the limit
    sizes, peak = traced_peak(lambda: [len(data) for _, data in BatchReader(stack.s3).iter_batch(bucket, key)])
    assert sizes == [100, 24 * MiB, 100] and peak < 2 * 24 * MiB + 4 * MiB


def test_verify_lists_a_bounded_number_of_damaged_objects(stack: Stack) -> None:
    refs = upload(stack, "r/bad.tar", [bytes([n % 256]) * 10 for n in range(150)])
    data = bytearray(stack.tar_bytes("r/bad.tar"))
    for ref in refs:
        data[ref.offset] ^= 0xFF
    stack.s3.put_object(Bucket=refs[0].bucket, Key="r/bad.tar", Body=bytes(data))
    check = BatchReader(stack.s3).verify(refs[0].bucket, "r/bad.tar")
    assert (check.objects, len(check.problems)) == (150, MAX_PROBLEMS + 1)
    assert check.problems[-1] == "50 more objects do not match their sha256 (not listed)"


def test_a_member_not_read_is_skipped_and_has_no_digest(stack: Stack) -> None:
    refs = upload(stack, "r/skip.tar", [b"a" * 5000, b"b" * 5000])
    stream = BatchReader(stack.s3).stream(refs[0].bucket, refs[0].key)
    members = iter(stream)
    first, data = next(members)
    assert first.ref == refs[0]
    assert next(iter(data.chunks())) == b"a" * 5000  # a small member comes in one chunk
    assert data.hexdigest() == refs[0].sha256
    second, skipped = next(members)
    assert second.ref == refs[1]
    with pytest.raises(StopIteration):
        next(members)  # the second member's data was never read: skipped, and the checks pass
    with pytest.raises(RuntimeError, match="skipped"):
        skipped.read()
    with pytest.raises(RuntimeError, match="no digest"):
        skipped.hexdigest()
    stream.check_tar_digest()
