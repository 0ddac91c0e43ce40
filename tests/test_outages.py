"""Outages ridden out: S3 down for a minute costs no caller anything; longer, callers hear it and the batches
land by themselves once S3 is back; a key taken by another object never keeps a batch from landing.

The key tests run on moto and SeaweedFS (``s3_servers``): they depend on the server refusing the conditional
create (412) and on what HEAD and the metadata say. The outages are the proxy refusing connections, which the
server never sees, and run on moto.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from batcher.errors import DeadLetterError
from batcher.flush import Flusher
from batcher.models import BatchRef
from batcher.uploader import Uploader
from tests.factories import stage_with, staged
from tests.faultproxy import FaultProxy
from tests.s3backends import S3Backend
from tests.support import Stack
from tests.test_faults import cli, flush_crashes
from tests.test_flush import Recorder
from workers import Batcher
from workers.bulkwait import BulkResultSet


@pytest.fixture
def proxy(s3_backend: S3Backend) -> Iterator[FaultProxy]:
    """Request it before ``stack``, so that the workers stop before the proxy does."""
    with FaultProxy(s3_backend.endpoint_url, seed=7) as fault_proxy:
        yield fault_proxy


def stats(stack: Stack) -> dict[str, Any]:
    done = cli(stack, "stats", "--json")
    assert done.returncode == 0, done.stderr
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


def stage_through(stack: Stack, objects: int, size: int) -> tuple[list[bytes], BulkResultSet]:
    bodies = [bytes([i % 251]) * size for i in range(objects)]
    with Batcher(stack.settings) as batcher:
        return bodies, batcher.put_objects((f"outage/{i:04d}", body) for i, body in enumerate(bodies))


def test_a_minute_of_refused_connections_with_50_mib_staged_ends_in_success(proxy: FaultProxy, stack: Stack) -> None:
    stack.start_worker(AWS_ENDPOINT_URL=proxy.url, S3BATCH_MAX_BATCH_AGE=1, S3BATCH_LEASE_SECONDS=5)
    proxy.refuse()  # a stopped S3, a closed port
    started = time.monotonic()
    bodies, results = stage_through(stack, 500, 100 * 1024)
    time.sleep(45)
    during = stats(stack)
    assert during["oldest_waiting_age_s"] > 40, during  # monitoring sees the objects held back
    assert during["failed_upload_rounds"] >= 3 and during["dead_letters"] == 0, during
    time.sleep(max(0.0, 60 - (time.monotonic() - started)))
    proxy.accept()
    back = time.monotonic()
    refs = [BatchRef.from_dict(value) for value in results.join_native(timeout=180)]
    print(f"\n60 s outage, {len(bodies)} objects of 100 KiB: all SUCCESS {time.monotonic() - back:.1f} s after S3 "
          f"answered again; failed rounds during it: {during['failed_upload_rounds']}")  # fmt: skip
    assert [stack.tar_bytes(r.key)[r.offset : r.offset + r.size] for r in refs] == bodies
    after = stats(stack)
    assert after["dead_letters"] == 0 and after["bytes_staged"] == 0 and after["oldest_waiting_age_s"] == 0
    assert after["last_upload_age_s"] < 60
    assert flush_crashes(stack) == []


def test_an_outage_past_the_retry_budget_fails_callers_then_lands_by_itself(proxy: FaultProxy, stack: Stack) -> None:
    """A 15-minute outage, simulated with a 3 s budget: FAILURE saying why, then SUCCESS with no operator."""
    stack.start_worker(
        AWS_ENDPOINT_URL=proxy.url, S3BATCH_MAX_BATCH_AGE=1, S3BATCH_LEASE_SECONDS=5, S3BATCH_UPLOAD_RETRY_SECONDS=3
    )
    proxy.refuse()
    bodies, results = stage_through(stack, 200, 1000)
    with pytest.raises(DeadLetterError, match=r"could not be uploaded for \d+ s .*uploaded by itself once S3 answers"):
        results.join_native(timeout=60)
    assert stats(stack)["dead_letters"] >= 1
    proxy.accept()
    back = time.monotonic()
    deadline = time.monotonic() + 60
    ids = [r.id for r in results.results or []]
    while {(fresh := results.app.AsyncResult(i)).state for i in ids} != {"SUCCESS"}:  # no cached FAILURE
        assert time.monotonic() < deadline, fresh.state
        time.sleep(0.5)
    print(f"\npast the budget: dead-lettered, then all SUCCESS {time.monotonic() - back:.1f} s after S3 came back")
    refs = [BatchRef.from_dict(results.app.AsyncResult(i).get(timeout=5)) for i in ids]
    assert [stack.tar_bytes(r.key)[r.offset : r.offset + r.size] for r in refs] == bodies
    assert stats(stack)["dead_letters"] == 0


@pytest.mark.s3_servers
@pytest.mark.parametrize("foreign", ["not s3batch's", "another batch"])
def test_a_key_held_by_another_object_gives_the_batch_a_new_key(stack: Stack, foreign: str) -> None:
    objs = [staged(f"rekey/{i}", bytes([i]) * 300) for i in range(50)]
    stage_with(stack.staging, objs, max_staged_bytes=10**9, max_batch_bytes=10**9, max_batch_objects=10**6)
    recorder = Recorder()
    flusher = Flusher(stack.settings, stack.lanes, Uploader(stack.s3), recorder)
    batch = flusher.claim(force=True)
    assert batch is not None
    metadata = {"s3batch-sha256": "0" * 64} if foreign == "another batch" else {}
    stack.s3.put_object(Bucket=stack.settings.require_bucket(), Key=batch.s3_key, Body=b"x" * 999, Metadata=metadata)
    report = flusher.process(batch)
    assert report.error is None and report.key != batch.s3_key and report.batch_id != batch.batch_id
    assert stack.tar_bytes(batch.s3_key) == b"x" * 999  # never overwritten
    refs = [recorder.refs[o.record_id] for o in objs]
    assert {r.key for r in refs} == {report.key} and {r.batch_id for r in refs} == {report.batch_id}
    assert [stack.tar_bytes(r.key)[r.offset : r.offset + r.size] for r in refs] == [o.body for o in objs]
    assert stack.staging.totals()["staged_bytes"] == 0 and recorder.failures == {}


@pytest.mark.s3_servers
def test_a_foreign_object_on_a_recovered_batch_is_named_and_rekeyed(stack: Stack) -> None:
    objs = [staged(f"taken/{i}", b"y" * 10) for i in range(3)]
    stage_with(stack.staging, objs, max_staged_bytes=10**9, max_batch_bytes=10**9, max_batch_objects=10**6)
    recorder = Recorder()
    flusher = Flusher(replace(stack.settings), stack.lanes, Uploader(stack.s3), recorder)
    batch = flusher.claim(force=True)
    assert batch is not None
    stack.s3.put_object(Bucket=stack.settings.require_bucket(), Key=batch.s3_key, Body=b"someone else's")
    report = flusher.process(batch, recovered=True)  # looked up with HEAD first: a foreign object, not ours
    assert report.error is None and report.key != batch.s3_key
    assert len(recorder.refs) == 3
