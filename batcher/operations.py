"""Operator commands: stats, cost, dead letters and their retry (``s3batch stats|cost|dead-letters|retry``)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime

from batcher.config import Settings
from batcher.cost import PUT_USD_PER_1000, cost_table
from batcher.staging import Staging, connect


def _staging() -> Staging:
    return Staging(connect(Settings.from_env().redis_url))


def stats(as_json: bool) -> int:
    """What is waiting in staging and what the flush has uploaded so far (kept in Redis by the flush)."""
    totals = _staging().totals()
    now_ms = int(time.time() * 1000)
    objects = totals.get("uploaded_objects", 0)
    requests = totals.get("put_requests", 0)
    figures = {
        "objects_waiting": totals["queued_objects"],
        "bytes_staged": totals["staged_bytes"],
        "oldest_staged_age_s": round((now_ms - totals["oldest_staged_ms"]) / 1000, 3)
        if totals["oldest_staged_ms"]
        else 0.0,
        "batches_in_flight": totals["batches_in_flight"],
        "dead_letters": totals["dead_letters"],
        "uploaded_objects": objects,
        "uploaded_batches": totals.get("uploaded_batches", 0),
        "uploaded_bytes": totals.get("uploaded_bytes", 0),
        "uploaded_tar_bytes": totals.get("uploaded_tar_bytes", 0),
        "put_requests": requests,
        "put_requests_saved": max(0, objects - requests),
        "cost_saved_usd": round(max(0, objects - requests) * PUT_USD_PER_1000 / 1000, 6),
    }
    if as_json:
        print(json.dumps(figures, sort_keys=True))
        return 0
    for name, value in figures.items():
        print(
            f"{name.replace('_', ' '):22} {value:,}"
            if isinstance(value, int)
            else f"{name.replace('_', ' '):22} {value}"
        )
    return 0


def cost(objects: int, size: int, as_json: bool) -> int:
    """PutObject calls and dollars for ``objects`` objects of ``size`` bytes, naive versus batched."""
    rows = cost_table(objects, size)
    if as_json:
        for row in rows:
            print(json.dumps(asdict(row), sort_keys=True))
        return 0
    print(f"{objects:,} objects of {size:,} bytes, S3 Standard list prices (PUT $0.005 per 1,000)")
    print(f"{'objects per PUT':>16}  {'PUT requests':>13}  {'PUT cost':>11}  {'stored GB':>10}  {'storage/month':>13}")
    for row in rows:
        label = "1 (naive)" if row.batch_objects == 1 else f"{row.batch_objects:,}"
        print(
            f"{label:>16}  {row.put_requests:>13,}  ${row.put_usd:>10,.4f}  {row.stored_bytes / 1e9:>10.3f}"
            f"  ${row.storage_usd_month:>12,.4f}"
        )
    return 0


def dead_letters(as_json: bool) -> int:
    """List dead-lettered batches."""
    rows = _staging().dead_letters()
    if as_json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return 0
    if not rows:
        print("no dead-lettered batches")
        return 0
    print(f"{'batch_id':26}  {'objects':>8}  {'bytes':>12}  {'attempts':>8}  {'dead since (UTC)':19}  last error")
    for row in rows:
        since = datetime.fromtimestamp(int(row.get("dead_ms", "0")) / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{row.get('batch_id', '?'):26}  {int(row.get('objects', 0)):>8,}  {int(row.get('bytes', 0)):>12,}  "
            f"{row.get('attempts', '0'):>8}  {since:19}  {row.get('last_error', '')[:200]}"
        )
    return 0


def retry(batch_ids: Sequence[str], every: bool) -> int:
    """Make dead-lettered batches due again; exit 1 when a named batch is not dead-lettered."""
    staging = _staging()
    if every:
        batch_ids = [row["batch_id"] for row in staging.dead_letters()]
    elif not batch_ids:
        print("s3batch: error: name the batches to retry, or pass --all", file=sys.stderr)
        return 2
    now_ms = int(time.time() * 1000)
    missing = [batch_id for batch_id in batch_ids if not staging.revive(batch_id, now_ms)]
    for batch_id in batch_ids:
        if batch_id not in missing:
            print(f"{batch_id}: queued for upload by the next flush")
    for batch_id in missing:
        print(f"s3batch: error: {batch_id} is not a dead-lettered batch (see `s3batch dead-letters`)", file=sys.stderr)
    return 1 if missing else 0
