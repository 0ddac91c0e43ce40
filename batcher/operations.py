"""What operators ask of staging: stats, dead letters and their retry. Each returns data; the CLI formats it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from batcher.cost import PUT_USD_PER_1000
from batcher.staging import Staging


def stats(staging: Staging) -> dict[str, int | float]:
    """What is waiting in staging and what the flush has uploaded so far (counters the flush keeps in Redis).

    ``oldest_waiting_age_s`` covers every object not yet in S3 (queued, in a batch being uploaded or backed off,
    dead-lettered): the figure to alert on. ``staging_epoch_age_s`` is how long the staged data has existed (a
    Redis that restarted empty starts a new epoch), ``lost_objects`` how many results were failed because their
    staged data was gone.
    """
    totals = staging.totals()
    now_ms = int(time.time() * 1000)
    objects = totals.get("uploaded_objects", 0)
    requests = totals.get("put_requests", 0)

    def age_s(ms: int) -> float:
        return round((now_ms - ms) / 1000, 3) if ms else 0.0

    return {
        "objects_waiting": totals["queued_objects"],
        "bytes_staged": totals["staged_bytes"],
        "oldest_staged_age_s": age_s(totals["oldest_staged_ms"]),
        "oldest_waiting_age_s": age_s(totals["oldest_waiting_ms"]),
        "batches_in_flight": totals["batches_in_flight"],
        "dead_letters": totals["dead_letters"],
        "failed_upload_rounds": totals["failed_rounds"],
        "last_upload_age_s": age_s(totals.get("last_upload_ms", 0)),
        "staging_epoch_age_s": age_s(totals["epoch_ms"]),
        "lost_objects": totals["lost_objects"],
        "uploaded_objects": objects,
        "uploaded_batches": totals.get("uploaded_batches", 0),
        "uploaded_bytes": totals.get("uploaded_bytes", 0),
        "uploaded_tar_bytes": totals.get("uploaded_tar_bytes", 0),
        "put_requests": requests,
        "put_requests_saved": max(0, objects - requests),
        "cost_saved_usd": round(max(0, objects - requests) * PUT_USD_PER_1000 / 1000, 6),
    }


def dead_letters(staging: Staging) -> list[dict[str, str]]:
    """Each dead-lettered batch: batch_id, s3_key, objects, bytes, attempts, last_error, dead_ms."""
    return staging.dead_letters()


@dataclass(frozen=True)
class Retried:
    """Which batches a retry made due again, and which named ones were not dead-lettered."""

    queued: list[str]
    missing: list[str]


def retry(staging: Staging, batch_ids: Sequence[str]) -> Retried:
    """Give the named dead-lettered batches a fresh retry budget; the next flush uploads them."""
    now_ms = int(time.time() * 1000)
    outcome = {batch_id: staging.revive(batch_id, now_ms) for batch_id in batch_ids}
    return Retried([b for b, ok in outcome.items() if ok], [b for b, ok in outcome.items() if not ok])


def retry_all(staging: Staging) -> Retried:
    """``retry`` of every dead-lettered batch."""
    return retry(staging, [row["batch_id"] for row in staging.dead_letters()])
