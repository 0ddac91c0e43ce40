"""Guarantee 6, Bounded: flushing a 512 MiB batch keeps the flushing process far below 512 MiB.

The flush runs in a fresh subprocess (bench/flush_probe.py) so that its peak RSS is its own:
the tar is spooled to disk, staged bodies come from Redis in bounded chunks, and the batch goes
up as a multipart upload one part at a time. The peak is the probe's own VmHWM: its ru_maxrss
would include this pytest process's peak (Linux keeps it across exec), see the probe.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from batcher.embedded import S3Server
from batcher.models import StagedObject
from batcher.uploader import PART_BYTES
from tests.factories import stage_with
from tests.support import Stack

MIB = 1024 * 1024
OBJECTS = 128
OBJECT_BYTES = 4 * MIB
STAGE_CALL_OBJECTS = 8  # 32 MiB per stage call: the test process never holds the whole batch
PEAK_RSS_LIMIT_MIB = 128
REF_EVERY = 9  # read back objects 0, 9, 18, ... 126
ROOT = Path(__file__).resolve().parent.parent


def body(index: int) -> bytes:
    """Object ``index``'s bytes, regenerated the same way whenever they are needed."""
    return random.Random(index).randbytes(OBJECT_BYTES)


def staged_object(index: int, staged_ms: int) -> StagedObject:
    data = body(index)
    return StagedObject(
        record_id=f"mem-{index:03d}",
        object_key=f"memory/{index:03d}.bin",
        body=data,
        staged_ms=staged_ms,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def stage_batch(stack: Stack) -> None:
    staged_ms = int(time.time() * 1000)
    for start in range(0, OBJECTS, STAGE_CALL_OBJECTS):
        objs = [staged_object(i, staged_ms) for i in range(start, start + STAGE_CALL_OBJECTS)]
        outcome = stage_with(
            stack.staging, objs, max_staged_bytes=4096 * MIB, max_batch_bytes=10**12, max_batch_objects=10**9
        )
        assert outcome.statuses == [1] * len(objs)
        del objs


def test_flush_of_512_mib_batch_keeps_peak_rss_bounded(stack: Stack, s3_server: S3Server) -> None:
    started = time.monotonic()
    stage_batch(stack)
    assert stack.staging.totals()["queued_bytes"] == OBJECTS * OBJECT_BYTES
    staged_s = time.monotonic() - started

    command = [
        sys.executable, "-m", "bench.flush_probe",
        "--redis-url", stack.settings.redis_url,
        "--bucket", str(stack.settings.bucket),
        "--endpoint", s3_server.endpoint_url,
        "--ref-every", str(REF_EVERY),
    ]  # fmt: skip
    probe = subprocess.run(command, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=240)
    assert probe.returncode == 0, f"probe failed ({probe.returncode}):\n{probe.stdout}\n{probe.stderr}"
    report = json.loads(probe.stdout)

    # One batch holding everything, uploaded as one multipart tar.
    assert report["objects"] == OBJECTS and report["published"] == OBJECTS and report["failed"] == 0
    [batch] = report["batches"]
    assert batch["objects"] == OBJECTS and batch["size_bytes"] == OBJECTS * OBJECT_BYTES
    assert stack.batch_keys() == [batch["key"]]
    head = stack.s3.head_object(Bucket=stack.settings.require_bucket(), Key=batch["key"])
    assert head["ContentLength"] == batch["tar_bytes"]
    parts = -(-batch["tar_bytes"] // PART_BYTES)
    assert head["ETag"].strip('"').endswith(f"-{parts}"), head["ETag"]

    # A sample of objects read back by ranged GET equals what was staged.
    sample = report["sample_refs"]
    assert [ref["object_key"] for ref in sample] == [f"memory/{i:03d}.bin" for i in range(0, OBJECTS, REF_EVERY)]
    for ref in sample:
        index = int(ref["record_id"].removeprefix("mem-"))
        got = stack.s3.get_object(Bucket=ref["bucket"], Key=ref["key"], Range=ref["range"])["Body"].read()
        assert got == body(index), f"{ref['object_key']} differs from what was staged"
        assert ref["etag"] == head["ETag"]

    print(
        f"\nflush of {OBJECTS} x {OBJECT_BYTES // MIB} MiB = {batch['size_bytes'] / MIB:.0f} MiB "
        f"(tar {batch['tar_bytes'] / MIB:.1f} MiB, {parts} parts): "
        f"peak RSS {report['peak_rss_mib']} MiB, RSS before flush {report['rss_before_mib']} MiB "
        f"(increase {report['flush_increase_mib']} MiB; ru_maxrss {report['ru_maxrss_mib']} MiB incl. pytest's), "
        f"{report['mb_per_s']} MB/s, "
        f"flush {report['seconds']} s; staging took {staged_s:.1f} s, test {time.monotonic() - started:.1f} s"
    )
    assert report["peak_rss_mib"] <= PEAK_RSS_LIMIT_MIB, report
