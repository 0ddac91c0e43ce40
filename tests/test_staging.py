"""Staging against a real redis-server: order, accounting, idempotence, atomic claims."""

from __future__ import annotations

import threading
import time

from batcher.lanes import Lanes
from batcher.models import ClaimedBatch
from batcher.staging import DUPLICATE, FULL, STAGED, Staging
from tests.factories import stage_with, staged
from tests.support import Stack

LIMITS = {"max_staged_bytes": 10_000, "max_batch_bytes": 1_000, "max_batch_objects": 5}


def claim(
    staging: Staging,
    batch_id: str,
    *,
    now_ms: int | None = None,
    force: bool = False,
    max_age_ms: int = 60_000,
    max_objects: int = 5,
    max_bytes: int = 1_000,
) -> ClaimedBatch | None:
    rules = staging.with_limits(
        max_batch_age_ms=max_age_ms, max_batch_objects=max_objects, max_batch_bytes=max_bytes, lease_ms=30_000
    )
    claimed, _ = rules.claim(
        now_ms=now_ms or int(time.time() * 1000), batch_id=batch_id, s3_key=f"k/{batch_id}.tar", force=force
    )
    return claimed


def test_stage_keeps_order_and_accounts_bytes(stack: Stack) -> None:
    objs = [staged(f"k{i}", bytes([i]) * (i + 1)) for i in range(4)]
    outcome = stage_with(stack.staging, objs, **LIMITS)
    assert outcome.statuses == [STAGED] * 4
    totals = stack.staging.totals()
    assert totals["staged_bytes"] == totals["queued_bytes"] == 1 + 2 + 3 + 4
    assert totals["queued_objects"] == 4
    batch = claim(stack.staging, "b1", force=True)
    assert batch is not None and batch.objects == 4 and batch.size_bytes == 10
    assert stack.staging.record_ids(batch) == [o.record_id for o in objs]
    heads = stack.staging.heads(batch)
    assert [(h.object_key, h.body, h.sha256) for h in heads] == [(o.object_key, b"", o.sha256) for o in objs]
    assert [h.size for h in heads] == [o.size for o in objs]  # a head knows its size without its body
    read = list(stack.staging.with_bodies(heads))
    assert [(o.object_key, o.body, o.sha256) for o in read] == [(o.object_key, o.body, o.sha256) for o in objs]
    assert stack.staging.totals()["queued_objects"] == 0


def test_staging_full_refuses_everything_after_the_first_refusal(stack: Stack) -> None:
    """A smaller object after a refused one is refused too, so that retrying the refused ones keeps order."""
    limits = dict(LIMITS, max_staged_bytes=100)
    objs = [staged("a", b"x" * 60), staged("b", b"y" * 50), staged("c", b"z" * 10)]
    assert stage_with(stack.staging, objs, **limits).statuses == [STAGED, FULL, FULL]
    assert stack.staging.totals()["queued_objects"] == 1


def test_same_record_id_is_staged_once(stack: Stack) -> None:
    obj = staged("k", b"abc", record_id="task-1")
    assert stage_with(stack.staging, [obj], **LIMITS).statuses == [STAGED]
    assert stage_with(stack.staging, [obj], **LIMITS).statuses == [DUPLICATE]
    assert stack.staging.totals()["queued_objects"] == 1


def test_staging_full_refuses_without_touching_anything(stack: Stack) -> None:
    limits = dict(LIMITS, max_staged_bytes=100)
    assert stage_with(stack.staging, [staged("a", b"x" * 60)], **limits).statuses == [STAGED]
    before = stack.staging.totals()
    assert stage_with(stack.staging, [staged("b", b"y" * 41)], **limits).statuses == [FULL]
    assert stack.staging.totals() == before
    assert not stack.staging.client.exists(stack.staging.keys.record("rec-b"))


def test_flush_is_requested_once_when_a_threshold_is_crossed(stack: Stack) -> None:
    wanted = [stage_with(stack.staging, [staged(f"k{i}", b"x")], **LIMITS).flush_wanted for i in range(8)]
    assert wanted == [False, False, False, False, True, False, False, False]
    time.sleep(1.1)  # a request is asked for at most once a second and lane
    assert stage_with(stack.staging, [staged("again", b"x")], **LIMITS).flush_wanted


def test_claim_waits_for_age_bytes_or_count(stack: Stack) -> None:
    now = int(time.time() * 1000)
    stage_with(stack.staging, [staged("old", b"x" * 10, staged_ms=now - 5_000)], **LIMITS)
    assert claim(stack.staging, "young", now_ms=now, max_age_ms=10_000) is None
    assert claim(stack.staging, "aged", now_ms=now + 5_000, max_age_ms=10_000) is not None
    # bytes: 600 + 600 > 1000 makes a batch due, and it takes only what fits
    stage_with(stack.staging, [staged("a", b"x" * 600), staged("b", b"y" * 600)], **LIMITS)
    batch = claim(stack.staging, "by-bytes", max_age_ms=60_000)
    assert batch is not None and (batch.objects, batch.size_bytes) == (1, 600)
    assert claim(stack.staging, "rest", max_age_ms=60_000) is None
    # count: five objects make a batch due
    stage_with(stack.staging, [staged(f"c{i}", b"z") for i in range(4)], **LIMITS)
    batch = claim(stack.staging, "by-count")
    assert batch is not None and batch.objects == 5


def test_nothing_staged_nothing_claimed(stack: Stack) -> None:
    assert claim(stack.staging, "none", force=True) is None
    assert stack.staging.totals()["batches_in_flight"] == 0


def test_concurrent_claims_never_share_an_object(stack: Stack) -> None:
    total = 3000
    for start in range(0, total, 500):
        objs = [staged(f"k{i}", b"x", record_id=f"r{i:05d}") for i in range(start, start + 500)]
        stage_with(stack.staging, objs, max_staged_bytes=10**9, max_batch_bytes=10**9, max_batch_objects=10**6)
    claimed: list[list[str]] = []
    lock = threading.Lock()

    def flusher(n: int) -> None:
        mine = Lanes.for_settings(stack.settings).staging(stack.staging.keys.lane)
        i = 0
        while (batch := claim(mine, f"b{n}-{i}", force=True, max_objects=37, max_bytes=10**9)) is not None:
            ids = mine.record_ids(batch)
            with lock:
                claimed.append(ids)
            i += 1

    threads = [threading.Thread(target=flusher, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [record for batch in claimed for record in batch]
    assert len(flat) == total and len(set(flat)) == total
    assert all(len(batch) <= 37 for batch in claimed)
    assert all(batch == sorted(batch) for batch in claimed)  # staging order within each batch


def test_expired_lease_is_taken_over_with_a_new_token(stack: Stack) -> None:
    stage_with(stack.staging, [staged("a", b"x")], **LIMITS)
    now = int(time.time() * 1000)
    batch = claim(stack.staging, "b", now_ms=now, force=True)
    assert batch is not None
    assert stack.staging.take_over("b", now + 1_000) is None  # lease still valid
    assert stack.staging.expired(now + 31_000) == ["b"]
    taken = stack.staging.take_over("b", now + 31_000)
    assert taken is not None and taken.token != batch.token and taken.s3_key == batch.s3_key
    assert not stack.staging.renew(batch, now + 60_000)  # the old holder is fenced out
    assert not stack.staging.mark_uploaded(batch, '"etag"')
    assert stack.staging.mark_uploaded(taken, '"etag"')
    stack.staging.delete_records(stack.staging.record_ids(taken))
    assert stack.staging.drop(taken, now + 32_000)
    assert stack.staging.totals()["staged_bytes"] == 0
