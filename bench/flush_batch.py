"""Scenario 6: stage one big batch, flush it in a fresh process (bench.flush_probe), read a sample back.

The flush runs in its own process so that its peak RSS (VmHWM) is the flush's alone, and against a Redis
database that no worker reads, so that no beat tick flushes the batch first.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from batcher.lanes import Lanes
from batcher.partitions import default_partition
from batcher.producer import prepare_object, stage_object
from bench.buckets import delete_keys, listing
from bench.checks import BenchError
from bench.flush_probe import probe_settings
from bench.outcome import Outcome

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
SAMPLE_EVERY = 9  # objects 0, 9, 18, ... are read back
PROBE_TIMEOUT_S = 600


def body(run: int, index: int, size: int) -> bytes:
    """Object ``index``'s bytes, regenerated the same way when they are checked (never all held at once)."""
    return random.Random(f"{run}/{index}").randbytes(size)


def stage_batch(redis_url: str, bucket: str, objects: int, object_bytes: int, run: int) -> float:
    """Stage ``objects`` bodies one by one with the probe's settings; returns the seconds it took."""
    settings = probe_settings(bucket, redis_url)
    lanes, partition = Lanes.for_settings(settings), default_partition(settings)
    started = time.perf_counter()
    for i in range(objects):
        obj = prepare_object(settings, f"flush-r{run}-{i:05d}", f"flush/r{run}/{i:05d}.bin", body(run, i, object_bytes))
        stage_object(lanes, partition, partition.lane(0), obj)
    return time.perf_counter() - started


def run_flush(
    *,
    redis_url: str,
    endpoint_url: str,
    bucket: str,
    objects: int,
    object_bytes: int,
    run: int,
    env: dict[str, str],
    client: Any,
) -> Outcome:
    """Stage, flush in a probe subprocess, verify a sample and the tar; raises BenchError if anything is off."""
    staged_s = stage_batch(redis_url, bucket, objects, object_bytes, run)
    command = [
        sys.executable, "-m", "bench.flush_probe", "--redis-url", redis_url, "--bucket", bucket,
        "--endpoint", endpoint_url, "--ref-every", str(SAMPLE_EVERY),
    ]  # fmt: skip
    probe = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    if probe.returncode != 0:
        raise BenchError(f"flush probe failed ({probe.returncode}):\n{probe.stdout}\n{probe.stderr}")
    report = json.loads(probe.stdout)
    if report["objects"] != objects or report["published"] != objects or len(report["batches"]) != 1:
        raise BenchError(f"flush: expected one batch of {objects} objects, the probe reported {report}")
    [batch] = report["batches"]
    tars = listing(client, bucket)
    if list(tars) != [batch["key"]] or tars[batch["key"]] != batch["tar_bytes"]:
        raise BenchError(f"flush: the bucket holds {tars}, expected the one tar {batch['key']}")
    for ref in report["sample_refs"]:
        index = int(ref["record_id"].rsplit("-", 1)[1])
        got = client.get_object(Bucket=ref["bucket"], Key=ref["key"], Range=ref["range"])["Body"].read()
        if got != body(run, index, object_bytes):
            raise BenchError(f"flush: a ranged GET {ref['range']} of {ref['key']} returned other bytes")
    delete_keys(client, bucket, list(tars))
    return Outcome(
        objects=objects,
        payload_bytes=report["bytes"],
        seconds=report["seconds"],
        verified=len(report["sample_refs"]),
        details={
            "staging_seconds": round(staged_s, 3),
            "tar_bytes": batch["tar_bytes"],
            "peak_rss_mib": report["peak_rss_mib"],
            "rss_before_mib": report["rss_before_mib"],
            "flush_increase_mib": report["flush_increase_mib"],
        },
    )
