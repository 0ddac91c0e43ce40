"""``s3batch find``: an object whose ref was lost is found again from the batches' indexes."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from batcher import BatchReader, BatchRef
from batcher.find import find, parse_since
from tests.support import Stack
from workers import Batcher
from workers.process import ROOT


def test_since_accepts_times_and_durations() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert parse_since("6h", now) == now - timedelta(hours=6)
    assert parse_since("90m", now) == now - timedelta(minutes=90)
    assert parse_since("2026-11-29T08:30", now) == datetime(2026, 11, 29, 8, 30, tzinfo=UTC)
    with pytest.raises(ValueError, match="neither an ISO 8601 time"):
        parse_since("yesterday", now)


def test_a_lost_ref_is_found_with_at_most_two_gets_per_batch(stack: Stack) -> None:
    stack.start_worker(S3BATCH_MAX_BATCH_OBJECTS=50)
    with Batcher(stack.settings) as batcher:
        refs = [
            BatchRef.from_dict(v)
            for v in batcher.put_objects((f"k/{i:03d}", b"%d" % i) for i in range(120)).join_native(timeout=60)
        ]
        again = BatchRef.from_dict(batcher.put_object("k/007", b"second version").get(timeout=60))
    batches = {ref.key for ref in refs} | {again.key}
    assert len(batches) >= 3
    gets: list[str] = []
    stack.s3.meta.events.register("provide-client-params.s3.GetObject", lambda params, **_: gets.append(params["Key"]))
    reader = BatchReader(stack.s3)
    found = list(find(reader, stack.settings.require_bucket(), stack.settings.prefix, "k/007"))
    assert [info.ref for info in found] == [refs[7], again]  # both versions, oldest first
    assert reader.get(found[-1].ref) == b"second version"
    assert len(gets) <= 2 * len(batches) and set(gets) == batches


def test_the_find_command_prints_refs_and_says_when_there_is_none(stack: Stack) -> None:
    stack.start_worker()
    with Batcher(stack.settings) as batcher:
        ref = batcher.put_object("lost/ref.json", b"{}").get(timeout=60)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "batcher.cli", "find", *args], env=stack.env(), cwd=ROOT, capture_output=True,
            text=True, timeout=60,
        )  # fmt: skip

    done = run("lost/ref.json", "--since", "1h")
    assert done.returncode == 0, done.stderr
    printed: dict[str, Any] = json.loads(done.stdout)
    assert BatchRef.from_dict(printed) == BatchRef.from_dict(ref)
    later = (datetime.now(UTC) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")
    none = run("lost/ref.json", "--since", later)
    assert none.returncode == 1 and "holds 'lost/ref.json'" in none.stderr
