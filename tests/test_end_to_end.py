"""put_object.delay() -> Redis staging -> beat flush -> tar -> S3 -> AsyncResult, with real workers.

The tests that take ``broker`` run with the Redis broker and with RabbitMQ (tests/brokers.py): the put_object
messages and beat's flush ticks travel through it, results and staging stay in Redis. The two heavy ones (2,000
objects through three tar tools, 10,000 objects over two workers) run on Redis only: on RabbitMQ they passed
too (40 s and 48 s), which the suite's time budget does not repeat on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import tarfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from celery.result import AsyncResult, ResultSet

from batcher import BatchReader, BatchRef
from batcher.index import INDEX_NAME, TRAILER_NAME, is_reserved
from tests.brokers import Broker
from tests.support import Stack

pytestmark = pytest.mark.s3_servers  # every test here on moto and on SeaweedFS (tests/s3backends.py)

TRICKY_KEYS = [
    "users/42/avatar.png",
    "é" * 512,  # 1,024 UTF-8 bytes
    "k" * 1024,
    "ключ/файл.txt",
    "日本語/データ/🙂.json",
    "..",
    ".",
    "../../etc/passwd",
    "a/../../b",
    "/leading/slash",
    "double//slash",
    "trailing/",
    "///",
    "with space/and more spaces ",
    "new\nline/tab\tand\rreturn",
    "percent%2F/%",
    "a",
    "a/b",
    "a",  # the same key twice is two objects
    "x" * 300 + "/" + "y" * 300,  # segments over 255 bytes
]


def wait_all(results: list[AsyncResult[Any]], timeout_s: float = 180) -> list[dict[str, Any]]:
    ResultSet(results).join_native(timeout=timeout_s)
    return [r.get(timeout=1) for r in results]


def sample_objects(count: int, rng: random.Random) -> list[tuple[str, bytes]]:
    objects = []
    for i in range(count):
        key = TRICKY_KEYS[i] if i < len(TRICKY_KEYS) else f"data/{i % 37}/object-{i:05d}.bin"
        if i % 40 == 0:
            size = rng.choice([64 * 1024, 300_000, 1024 * 1024])
        else:
            size = rng.choice([0, 1, 100, 511, 512, 513, 1024, 4000])
        objects.append((key, rng.randbytes(size)))
    return objects


def test_round_trip_exact_bytes_and_standard_tars(stack: Stack, tmp_path: Path) -> None:
    from workers.tasks import put_object

    stack.start_worker(S3BATCH_MAX_BATCH_BYTES=8 * 1024 * 1024, S3BATCH_MAX_OBJECT_BYTES=1024 * 1024)
    objects = sample_objects(2000, random.Random(7))
    results = [put_object.delay(key, body) for key, body in objects]
    payloads = wait_all(results)

    by_location: dict[tuple[str, int], tuple[str, bytes]] = {}
    for (key, body), result in zip(objects, payloads, strict=True):
        ref = BatchRef.from_dict(result)
        assert result["object_key"] == key and result["size"] == len(body)
        assert result["sha256"] == hashlib.sha256(body).hexdigest()
        assert result["bucket"] == stack.settings.bucket and result["key"].endswith(f"/{result['batch_id']}.tar")
        if body:
            raw = stack.s3.get_object(Bucket=ref.bucket, Key=ref.key, Range=result["range"])["Body"].read()
            assert raw == body, key
        else:
            assert not result["range"]
        by_location[(ref.key, ref.offset)] = (key, body)

    batch_keys = stack.batch_keys()
    assert batch_keys == sorted({p["key"] for p in payloads})
    members = 0
    reader = BatchReader(stack.s3)
    for n, batch_key in enumerate(batch_keys):
        path = tmp_path / f"batch{n}.tar"
        path.write_bytes(stack.tar_bytes(batch_key))
        members += check_with_every_tar_tool(path, tmp_path / f"x{n}", batch_key, by_location)
        produced = sorted((BatchRef.from_dict(p) for p in payloads if p["key"] == batch_key), key=lambda r: r.offset)
        assert reader.index(stack.settings.bucket or "", batch_key).refs == produced
        assert reader.verify(stack.settings.bucket or "", batch_key).ok
    assert members == len(objects)


def check_with_every_tar_tool(
    path: Path, workdir: Path, batch_key: str, by_location: dict[tuple[str, int], tuple[str, bytes]]
) -> int:
    """GNU tar, bsdtar and tarfile (data filter) list and extract the batch silently, with exact bytes.

    The batch's own index and trailer members extract too, to the same bytes everywhere.
    """
    env = dict(os.environ, LC_ALL="C.UTF-8")  # bsdtar converts non-ASCII names to the locale's charset
    for tool in ("tar", "bsdtar"):
        listed = subprocess.run([tool, "-tvf", str(path)], capture_output=True, check=False, env=env)
        assert (listed.returncode, listed.stderr) == (0, b""), (tool, listed.stderr)
        target = workdir / tool
        target.mkdir(parents=True)
        extracted = subprocess.run(
            [tool, "-xf", str(path), "-C", str(target)], capture_output=True, check=False, env=env
        )
        assert (extracted.returncode, extracted.stderr) == (0, b""), (tool, extracted.stderr)
    target = workdir / "tarfile"
    with tarfile.open(path) as archive:
        archive.extractall(target, filter="data")
        count = 0
        for member in archive.getmembers():
            if is_reserved(member.name):
                assert member.name in (INDEX_NAME, TRAILER_NAME)
                own = (target / member.name).read_bytes()
                assert all((workdir / root / member.name).read_bytes() == own for root in ("tar", "bsdtar"))
                continue
            key, body = by_location[(batch_key, member.offset_data)]
            facts = json.loads(member.pax_headers.get("comment", "{}"))
            assert facts.get("key", member.name) == key
            for root in ("tar", "bsdtar"):
                assert (workdir / root / member.name).read_bytes() == body
            assert (target / member.name).read_bytes() == body
            assert (target / member.name).resolve().is_relative_to(target.resolve())
            count += 1
    return count


def test_states_result_fields_and_reader(broker: Broker, stack: Stack) -> None:
    from workers.tasks import put_object

    stack.start_worker(S3BATCH_MAX_BATCH_AGE=2)
    data = b"\x89PNG fake avatar" * 100
    r = put_object.delay("users/42/avatar.png", data, content_type="image/png")
    deadline = time.monotonic() + 10
    while r.state == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.state == "STAGED"  # type: ignore[comparison-overlap]  # celery-types omits custom states
    assert r.info["sha256"] == hashlib.sha256(data).hexdigest()
    result = r.get(timeout=15)
    assert r.state == "SUCCESS"
    assert set(result) == {
        "bucket",
        "key",
        "offset",
        "size",
        "range",
        "object_key",
        "batch_id",
        "etag",
        "sha256",
    }
    json.dumps(result)
    assert result["etag"] == stack.s3.head_object(Bucket=result["bucket"], Key=result["key"])["ETag"]
    assert BatchReader(stack.s3).get(BatchRef.from_dict(result)) == data


@pytest.mark.s3_servers(
    "moto",
    reason="exactly one batch per object under two workers is the atomic claim's doing (Redis), not the S3 "
    "server's; 41 s on SeaweedFS, whose many-batch uploads test_round_trip_exact_bytes_and_standard_tars covers",
)
def test_two_workers_ten_thousand_objects_each_in_exactly_one_batch(stack: Stack) -> None:
    from workers.tasks import put_object

    limits: dict[str, Any] = {"S3BATCH_MAX_BATCH_OBJECTS": 700, "S3BATCH_MAX_BATCH_AGE": 1}
    stack.start_worker(beat=True, **limits)
    stack.start_worker(beat=False, **limits)
    bodies = [f"object {i:05d} ".encode() * (1 + i % 7) for i in range(10_000)]
    results = [put_object.delay(f"load/{i:05d}", body) for i, body in enumerate(bodies)]
    payloads = wait_all(results, timeout_s=300)

    locations = {(p["key"], p["offset"]) for p in payloads}
    assert len(locations) == len(bodies)  # no two objects share a place
    batch_keys = stack.batch_keys()
    assert sorted({p["key"] for p in payloads}) == batch_keys
    members: list[tuple[str, int]] = []
    for batch_key in batch_keys:
        batch = stack.members(batch_key)
        assert len(batch) <= 700
        mtimes = [m.mtime for m in batch]
        assert mtimes == sorted(mtimes)  # staging order within a batch
        members += [(batch_key, m.offset_data) for m in batch]
    assert len(members) == len(set(members)) == len(bodies)  # every object in exactly one batch
    assert set(members) == locations
    for body, payload in zip(bodies, payloads, strict=True):
        assert payload["sha256"] == hashlib.sha256(body).hexdigest()
    assert stack.staging.totals()["staged_bytes"] == 0


def test_age_trigger_uploads_a_lone_object_after_max_batch_age(broker: Broker, stack: Stack) -> None:
    from workers.tasks import put_object

    stack.start_worker(S3BATCH_MAX_BATCH_AGE=2)
    r = put_object.delay("lonely", b"just me")
    while r.state == "PENDING":
        time.sleep(0.005)
    staged_at = time.time()
    assert r.state == "STAGED"  # type: ignore[comparison-overlap]  # celery-types omits custom states
    result = r.get(timeout=10)
    done = datetime.fromisoformat(r._get_task_meta()["date_done"]).timestamp()
    waited = done - staged_at
    tick = 0.2
    assert 2 - 0.1 <= waited <= 2 + tick + 1.0, waited  # 1 s of slack for the upload on a busy machine
    assert stack.batch_keys() == [result["key"]]


def test_count_and_byte_thresholds_close_batches_without_waiting_for_age(broker: Broker, stack: Stack) -> None:
    from workers.tasks import put_object

    stack.start_worker(
        S3BATCH_MAX_BATCH_AGE=120, S3BATCH_MAX_BATCH_OBJECTS=50, S3BATCH_MAX_BATCH_BYTES=40_000,
        S3BATCH_MAX_OBJECT_BYTES=20_000,
    )  # fmt: skip

    def wait_for(results: list[AsyncResult[Any]], count: int) -> None:
        deadline = time.monotonic() + 30  # far below the 120 s batch age
        while sum(r.state == "SUCCESS" for r in results) < count:
            assert time.monotonic() < deadline, [r.state for r in results]
            time.sleep(0.1)

    by_count = [put_object.delay(f"small/{i}", b"s" * 10) for i in range(120)]
    wait_for(by_count, 100)  # two batches of 50 closed by the count limit
    # 15,000 * 3 > 40,000: the byte limit closes batches of at most 40,000 bytes
    by_bytes = [put_object.delay(f"big/{i}", b"b" * 15_000) for i in range(5)]
    wait_for(by_bytes, 2)
    for batch_key in stack.batch_keys():
        sizes = [m.size for m in stack.members(batch_key)]
        assert sum(sizes) <= 40_000 and len(sizes) <= 50, (batch_key, len(sizes), sum(sizes))
    # what is left stays staged: below every limit, and 120 s is far away
    time.sleep(2)
    assert any(r.state == "STAGED" for r in by_count + by_bytes)  # type: ignore[comparison-overlap]  # celery-types omits custom states
    assert stack.staging.totals()["queued_objects"] >= 1


def test_nothing_staged_no_put_object(stack: Stack) -> None:
    stack.start_worker(S3BATCH_MAX_BATCH_AGE=1)
    time.sleep(3)  # about 15 beat ticks
    assert stack.batch_keys() == []
