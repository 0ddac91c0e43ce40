"""Flush whatever is staged, in a fresh process, and report the flush's speed and peak memory.

Run as a subprocess so that the peak RSS is the flush's own, not the test runner's:

    python -m bench.flush_probe --redis-url URL --bucket B --endpoint URL [--ref-every K]

Prints one JSON object: the flushed batches (objects, bytes, tar_bytes, seconds, key), MB/s,
the RSS just before the flush and the process's peak RSS (both in MiB), and, with
``--ref-every K``, the refs of every K-th published object (for reading a sample back).

The peak is ``VmHWM`` of /proc/self/status, this process's own high-water mark. ``ru_maxrss``
(RUSAGE_SELF) is reported too but is not the flush's peak when the probe is a subprocess:
Linux keeps the high-water mark of the address space that exec replaced, so a child forked
from a 125 MiB pytest process reports at least 125 MiB even if it never uses more than 10.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from batcher.config import Settings
from batcher.flush import Flusher
from batcher.lanes import Lanes
from batcher.models import BatchRef, ClaimedBatch, StagedObject
from batcher.uploader import Uploader, s3_client

MIB = 1024 * 1024
_BATCH_FIELDS = ("objects", "size_bytes", "tar_bytes", "seconds", "key", "error")


class CountingSink:
    """A ResultSink that only counts (and keeps every ``ref_every``-th ref, when asked)."""

    def __init__(self, ref_every: int = 0) -> None:
        self.published = 0
        self.failed = 0
        self.ref_every = ref_every
        self.sample: list[dict[str, Any]] = []

    def publish(self, batch: ClaimedBatch, uploaded: Sequence[tuple[StagedObject, BatchRef]]) -> None:
        for head, ref in uploaded:
            if self.ref_every and self.published % self.ref_every == 0:
                self.sample.append({"record_id": head.record_id, **ref.to_dict()})
            self.published += 1

    def fail(
        self, batch: ClaimedBatch, record_ids: Sequence[str], error: Exception, heads: Mapping[str, StagedObject]
    ) -> None:
        self.failed += len(record_ids)


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024  # the kernel reports kB
    raise RuntimeError(f"no {field} in /proc/self/status (not Linux?)")


def vm_rss_mib() -> float:
    """The current resident set size (VmRSS), in MiB."""
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (VmHWM, reset by exec), in MiB."""
    return _status_mib("VmHWM")


def ru_maxrss_mib() -> float:
    """getrusage's peak RSS in MiB (KiB on Linux); includes the pre-exec parent's peak, see above."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def probe_settings(bucket: str, redis_url: str) -> Settings:
    """Limits that hold a whole 512 MiB batch of 4 MiB objects; stage with these too (one batch, no refusal)."""
    return Settings(
        bucket=bucket,
        redis_url=redis_url,
        max_batch_bytes=1024 * MIB,
        max_object_bytes=8 * MIB,
        max_staged_bytes=2048 * MIB,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--endpoint", required=True, help="S3 endpoint URL")
    parser.add_argument("--ref-every", type=int, default=0, help="keep the ref of every K-th object (0: none)")
    args = parser.parse_args(argv)

    settings = probe_settings(args.bucket, args.redis_url)
    sink = CountingSink(args.ref_every)
    flusher = Flusher(settings, Lanes.for_settings(settings), Uploader(s3_client(endpoint_url=args.endpoint)), sink)
    flusher.uploader.client.list_objects_v2(Bucket=args.bucket, MaxKeys=1)  # connection and lazy imports
    rss_before = vm_rss_mib()
    peak_before = peak_rss_mib()

    started = time.monotonic()
    batches = flusher.flush(force=True)
    seconds = time.monotonic() - started

    peak = peak_rss_mib()
    total_bytes = sum(b.size_bytes for b in batches)
    report = {
        "batches": [{k: v for k, v in asdict(b).items() if k in _BATCH_FIELDS} for b in batches],
        "objects": sum(b.objects for b in batches),
        "bytes": total_bytes,
        "seconds": round(seconds, 3),
        "mb_per_s": round(total_bytes / 1e6 / seconds, 1) if seconds else None,
        "mib_per_s": round(total_bytes / MIB / seconds, 1) if seconds else None,
        "rss_before_mib": round(rss_before, 1),
        "peak_rss_before_flush_mib": round(peak_before, 1),
        "peak_rss_mib": round(peak, 1),
        "flush_increase_mib": round(peak - rss_before, 1),
        "ru_maxrss_mib": round(ru_maxrss_mib(), 1),
        "published": sink.published,
        "failed": sink.failed,
        "sample_refs": sink.sample,
    }
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    return 0 if sink.failed == 0 and all(b.error is None for b in batches) else 1


if __name__ == "__main__":
    sys.exit(main())
