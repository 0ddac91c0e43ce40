"""workers.Batcher (batcher.Batcher with Celery results), the direct staging path: real Redis, moto's server and
Celery worker subprocesses."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
from typing import Any, cast

import pytest
from celery.result import AsyncResult, ResultSet

from batcher import BatchReader, BatchRef
from batcher.errors import (
    InputError,
    InvalidBodyError,
    InvalidKeyError,
    InvalidMetadataError,
    ObjectTooLargeError,
    StagingFullError,
)
from tests.support import Stack, settings_env
from workers import Batcher


def handles(results: ResultSet) -> list[AsyncResult[Any]]:
    """``results.results``: celery-types allows None there, but a ResultSet built from a list holds that list."""
    return cast("list[AsyncResult[Any]]", results.results)


def refs_of(results: ResultSet, timeout_s: float = 120) -> list[BatchRef]:
    return [BatchRef.from_dict(value) for value in results.join_native(timeout=timeout_s)]


def assert_in_staging_order(refs: list[BatchRef]) -> None:
    """One producer's objects keep their order: each batch holds a contiguous run of them, offsets increasing."""
    seen: set[str] = set()
    for before, ref in zip([None, *refs], refs, strict=False):
        if before is not None and before.batch_id == ref.batch_id:
            assert ref.offset > before.offset
        else:
            assert ref.batch_id not in seen
            seen.add(ref.batch_id)


def test_put_objects_round_trip_in_order(stack: Stack) -> None:
    rng = random.Random(5)
    objects = [(f"bulk/{i:05d}", rng.randbytes(rng.choice([0, 1, 100, 1024, 5000, 70_000]))) for i in range(3000)]
    with Batcher(stack.settings) as batcher:
        results = batcher.put_objects(objects)
        assert isinstance(results, ResultSet) and len(handles(results)) == len(objects)
        # No worker yet: every object is in Redis staging and its result says so.
        assert {r.state for r in handles(results)} == {"STAGED"}
        assert handles(results)[7].info == {
            "object_key": "bulk/00007",
            "size": len(objects[7][1]),
            "sha256": hashlib.sha256(objects[7][1]).hexdigest(),
            "epoch": stack.staging.epoch(),  # the staged data it is in (losses are reported)
        }
        stack.start_worker()
        refs = refs_of(results)
    reader = BatchReader(stack.s3)
    assert [ref.object_key for ref in refs] == [key for key, _ in objects]
    assert reader.get_many(refs) == [body for _, body in objects]
    assert reader.get(refs[-1]) == objects[-1][1]
    assert_in_staging_order(refs)
    assert stack.staging.totals()["staged_bytes"] == 0


def test_put_object_single_and_celery_handles(stack: Stack) -> None:
    stack.start_worker()
    with Batcher(stack.settings) as batcher:
        result = batcher.put_object("one/object.json", b'{"a": 1}', "application/json", {"origin": "test"})
        assert isinstance(result, AsyncResult)
        value = result.get(timeout=60)
    ref = BatchRef.from_dict(value)
    assert result.state == "SUCCESS" and ref.object_key == "one/object.json"
    assert BatchReader(stack.s3).get(ref) == b'{"a": 1}'
    head = BatchReader(stack.s3).head(ref)
    assert head.content_type == "application/json" and head.metadata == {"origin": "test"}


def test_put_object_refuses_bad_input_before_staging(stack: Stack) -> None:
    settings = dataclasses.replace(stack.settings, max_object_bytes=1000)
    with Batcher(settings) as batcher:
        with pytest.raises(InvalidKeyError, match="empty"):
            batcher.put_object("", b"x")
        with pytest.raises(InvalidBodyError, match="bytes"):
            batcher.put_object("k", "text")  # type: ignore[arg-type]
        with pytest.raises(ObjectTooLargeError, match="1000"):
            batcher.put_object("big", b"x" * 1001)
    assert stack.staging.totals()["queued_objects"] == 0


def test_put_objects_fails_bad_items_alone(stack: Stack) -> None:
    items: list[Any] = [
        ("good/0", b"zero"),
        ("", b"empty key"),
        ("good/1", "a str body"),
        {"key": "good/2", "body": b"two", "content_type": "text/plain"},
        {"key": "no body"},
        ["a", b"list"],
        ("good/3", b"three", None, {"bad": 3}),
        ("good/4", b"four", None, {"ok": "yes"}),
    ]
    stack.start_worker()
    with Batcher(stack.settings) as batcher:
        results = handles(batcher.put_objects(items))
    ResultSet(results).join_native(timeout=60, propagate=False)
    states = [r.state for r in results]
    assert states == ["SUCCESS", "FAILURE", "FAILURE", "SUCCESS", "FAILURE", "FAILURE", "FAILURE", "SUCCESS"]
    assert isinstance(results[1].result, InvalidKeyError)
    assert isinstance(results[2].result, InvalidBodyError)
    assert isinstance(results[4].result, InputError) and "item 4" in str(results[4].result)
    assert isinstance(results[5].result, InputError) and "item 5 is a list" in str(results[5].result)
    assert isinstance(results[6].result, InvalidMetadataError)
    reader = BatchReader(stack.s3)
    # .result is the value or the exception; items 3 and 7 are SUCCESS (checked above), so their ref dicts
    assert reader.get(BatchRef.from_dict(cast(dict[str, Any], results[3].result))) == b"two"
    assert reader.get(BatchRef.from_dict(cast(dict[str, Any], results[7].result))) == b"four"


def test_put_objects_waits_for_room_and_keeps_order(stack: Stack) -> None:
    """Staging holds 64 KiB; 300 KiB go through as the worker uploads, in order, with nothing refused."""
    settings = dataclasses.replace(
        stack.settings, max_staged_bytes=64 * 1024, max_batch_bytes=32 * 1024, max_object_bytes=2048
    )
    overrides: dict[str, Any] = settings_env(settings)
    stack.start_worker(**overrides)
    rng = random.Random(9)
    objects = [(f"tight/{i:04d}", rng.randbytes(2048)) for i in range(150)]
    with Batcher(settings, full_wait_s=60) as batcher:
        refs = refs_of(batcher.put_objects(objects))
    assert [BatchReader(stack.s3).get(ref) for ref in refs] == [body for _, body in objects]
    assert len({ref.batch_id for ref in refs}) >= 300 * 1024 // (32 * 1024)
    assert_in_staging_order(refs)


def test_put_objects_gives_up_when_staging_stays_full(stack: Stack) -> None:
    settings = dataclasses.replace(
        stack.settings, max_staged_bytes=10 * 1024, max_batch_bytes=10 * 1024, max_object_bytes=1024
    )
    objects = [(f"full/{i:02d}", bytes([i]) * 1024) for i in range(15)]
    with (
        Batcher(settings, full_wait_s=0.3) as batcher,
        pytest.raises(StagingFullError, match="S3BATCH_MAX_STAGED_BYTES=10240") as caught,
    ):
        batcher.put_objects(objects)
    accepted = caught.value.accepted
    assert isinstance(accepted, ResultSet) and len(handles(accepted)) == 10
    assert {r.state for r in handles(accepted)} == {"STAGED"}
    stack.start_worker()
    refs = refs_of(accepted)
    assert [ref.object_key for ref in refs] == [key for key, _ in objects[:10]]
    assert [BatchReader(stack.s3).get(ref) for ref in refs] == [body for _, body in objects[:10]]


def test_accepted_holds_the_decided_items_in_input_order(stack: Stack) -> None:
    """Bad items before the point where staging stayed full are in ``accepted`` too, with their FAILURE."""
    settings = dataclasses.replace(
        stack.settings, max_staged_bytes=4 * 1024, max_batch_bytes=4 * 1024, max_object_bytes=1024
    )
    items: list[Any] = [("a", b"x" * 1024), ("", b"bad key"), ("b", b"y" * 1024), ("c", b"z" * 1024)]
    items += [(f"late/{i}", b"w" * 1024) for i in range(5)]
    with (
        Batcher(settings, full_wait_s=0.2) as batcher,
        pytest.raises(StagingFullError) as caught,
    ):
        batcher.put_objects(items)
    accepted = caught.value.accepted.results
    assert [r.state for r in accepted] == ["STAGED", "FAILURE", "STAGED", "STAGED", "STAGED"]
    assert accepted[4].info["object_key"] == "late/0"


def test_a_batcher_for_other_settings_waits_where_their_workers_publish(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No CELERY_RESULT_BACKEND: workers of these settings keep results in their staging Redis, and so does the
    Batcher built for them, though this process's own app (S3BATCH_REDIS_URL) points elsewhere."""
    monkeypatch.delenv("CELERY_RESULT_BACKEND")
    stack.start_worker()
    with Batcher(stack.settings) as batcher:
        assert batcher.settings.redis_url != os.environ["S3BATCH_REDIS_URL"]
        result = batcher.put_object("elsewhere", b"results live with their staging")
        assert (
            BatchReader(stack.s3).get(BatchRef.from_dict(result.get(timeout=60))) == b"results live with their staging"
        )
    assert stack.staging.client.exists(f"celery-task-meta-{result.id}")


def test_full_batches_are_flushed_on_request_without_beat(stack: Stack) -> None:
    """No beat and a 60 s age: only the flush request of a full batch can upload it."""
    settings = dataclasses.replace(stack.settings, max_batch_objects=100, max_batch_age_s=60)
    overrides: dict[str, Any] = settings_env(settings)
    stack.start_worker(beat=False, **overrides)
    with Batcher(settings) as batcher:
        results = handles(batcher.put_objects((f"req/{i:03d}", b"%d" % i) for i in range(250)))
    ResultSet(results[:200]).join_native(timeout=60)
    assert len(stack.batch_keys()) == 2
    assert {r.state for r in results[200:]} == {"STAGED"}
