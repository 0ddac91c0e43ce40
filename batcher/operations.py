"""What operators ask of staging: stats, dead letters and their retry, per lane and in total. Each returns
data; the CLI formats it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from batcher.cost import PUT_USD_PER_1000
from batcher.lanes import Lanes, LaneState

_SUMMED = (
    "queued_objects", "staged_bytes", "batches_in_flight", "dead_letters", "failed_rounds", "lost_objects",
    "uploaded_objects", "uploaded_batches", "uploaded_bytes", "uploaded_tar_bytes", "put_requests",
)  # fmt: skip
_OLDEST = ("oldest_staged_ms", "oldest_waiting_ms")


def stats(lanes: Lanes) -> dict[str, int | float]:
    """What is waiting in staging and what the flushes have uploaded so far, over every lane (counters the flushes
    keep in Redis).

    ``oldest_waiting_age_s`` covers every object not yet in S3 (queued, in a batch being uploaded or backed off,
    dead-lettered): the figure to alert on. ``staging_epoch_age_s`` is how long the youngest lane's staged data
    has existed (a Redis that restarted empty starts new epochs), ``lost_objects`` how many results were failed
    because their staged data was gone.
    """
    return figures(list(lanes.states()))


def stats_by_lane(lanes: Lanes) -> dict[str, dict[str, int | float]]:
    """``stats`` of each lane, by lane name, with its partition's bucket and prefix."""
    rows: dict[str, dict[str, int | float]] = {}
    for state in lanes.states():
        rows[state.lane] = figures([state])
    return rows


def figures(states: Sequence[LaneState]) -> dict[str, int | float]:
    """The stats of the lanes in ``states``, summed (ages: of the oldest, counters: added up)."""
    now_ms = int(time.time() * 1000)
    total = {name: sum(state.totals.get(name, 0) for state in states) for name in _SUMMED}
    oldest = {name: min((s.totals[name] for s in states if s.totals.get(name)), default=0) for name in _OLDEST}
    last_upload = max((state.totals.get("last_upload_ms", 0) for state in states), default=0)
    epoch = max((state.totals.get("epoch_ms", 0) for state in states), default=0)

    def age_s(ms: int) -> float:
        return round((now_ms - ms) / 1000, 3) if ms else 0.0

    objects, requests = total["uploaded_objects"], total["put_requests"]
    return {
        "lanes": len(states),
        "objects_waiting": total["queued_objects"],
        "bytes_staged": total["staged_bytes"],
        "oldest_staged_age_s": age_s(oldest["oldest_staged_ms"]),
        "oldest_waiting_age_s": age_s(oldest["oldest_waiting_ms"]),
        "batches_in_flight": total["batches_in_flight"],
        "dead_letters": total["dead_letters"],
        "failed_upload_rounds": total["failed_rounds"],
        "last_upload_age_s": age_s(last_upload),
        "staging_epoch_age_s": age_s(epoch),
        "lost_objects": total["lost_objects"],
        "uploaded_objects": objects,
        "uploaded_batches": total["uploaded_batches"],
        "uploaded_bytes": total["uploaded_bytes"],
        "uploaded_tar_bytes": total["uploaded_tar_bytes"],
        "put_requests": requests,
        "put_requests_saved": max(0, objects - requests),
        "cost_saved_usd": round(max(0, objects - requests) * PUT_USD_PER_1000 / 1000, 6),
    }


def dead_letters(lanes: Lanes) -> list[dict[str, str]]:
    """Each dead-lettered batch of every lane: lane, bucket, batch_id, s3_key, objects, bytes, attempts, last_error,
    dead_ms, dead_reason."""
    rows: list[dict[str, str]] = []
    for lane in lanes.dead():
        bucket = lanes.partition_of(lane).bucket
        rows += [{"lane": lane, "bucket": bucket, **row} for row in lanes.staging(lane).dead_letters()]
    return rows


@dataclass(frozen=True)
class Retried:
    """Which batches a retry made due again, and which named ones were not dead-lettered."""

    queued: list[str]
    missing: list[str]


def retry(lanes: Lanes, batch_ids: Sequence[str]) -> Retried:
    """Give the named dead-lettered batches a fresh retry budget; the next flush uploads them."""
    where = {row["batch_id"]: row["lane"] for row in dead_letters(lanes)}
    now_ms = int(time.time() * 1000)
    queued: list[str] = []
    for batch_id in batch_ids:
        lane = where.get(batch_id)
        if lane is not None and lanes.staging(lane).revive(batch_id, now_ms):
            lanes.mark_leased(lane, now_ms)  # due at once: its lease is the flush's next look
            lanes.settle_dead(lane)
            queued.append(batch_id)
    return Retried(queued, [batch_id for batch_id in batch_ids if batch_id not in queued])


def retry_all(lanes: Lanes) -> Retried:
    """``retry`` of every dead-lettered batch."""
    return retry(lanes, [row["batch_id"] for row in dead_letters(lanes)])
