"""Task ids that tell when they were issued, so that a vanished result can be told from an unknown id.

Celery's result backend answers PENDING both for an id it never saw and for one whose result has expired.
The example apps choose each task's id themselves: a UUIDv7 (RFC 9562), whose first 48 bits are the issue
time in milliseconds. For a PENDING id the app can then tell, with no storage of its own:

- not a UUIDv7: this app did not issue it (UNKNOWN);
- issued less than a result lifetime ago: sent and not staged yet, or lost by the broker (PENDING);
- issued longer ago: its result, if it ever had one, has expired, or the task never ran (EXPIRED).

It cannot tell a UUIDv7 it issued from one made up by a client, nor a result deleted before its lifetime from
one not written yet: that would take a record per upload on the server.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime, timedelta

# A client's clock may run a little ahead of ours: ids up to this far in the future still count as issued.
CLOCK_SKEW = timedelta(seconds=60)


def new_task_id(now_s: float | None = None) -> str:
    """A UUIDv7 for ``now_s`` (seconds since the epoch; now by default): 48 bits of milliseconds, 74 random."""
    millis = int((time.time() if now_s is None else now_s) * 1000) & (2**48 - 1)
    random_bits = int.from_bytes(os.urandom(10), "big")  # 80 bits, 74 of them used
    value = millis << 80 | 0x7 << 76 | (random_bits >> 68) << 64 | 0b10 << 62 | (random_bits & (2**62 - 1))
    return str(uuid.UUID(int=value))


def issued_at(task_id: str) -> datetime | None:
    """When a UUIDv7 task id was issued (UTC), or None for any other id."""
    try:
        parsed = uuid.UUID(task_id)
    except ValueError:
        return None
    if parsed.variant != uuid.RFC_4122 or parsed.version != 7:
        return None
    return datetime.fromtimestamp((parsed.int >> 80) / 1000, UTC)


def lifetime_s(result_expires: object) -> float | None:
    """Celery's ``result_expires`` (a timedelta, seconds, or None for never) in seconds."""
    if result_expires is None:
        return None
    if isinstance(result_expires, timedelta):
        return result_expires.total_seconds()
    if isinstance(result_expires, int | float):
        return float(result_expires)
    raise TypeError(f"result_expires must be a timedelta, a number of seconds or None, not {result_expires!r}")
