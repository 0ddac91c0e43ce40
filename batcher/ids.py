"""Batch ids that sort by creation time and are unique across machines (ULID layout).

Within one process the ids are monotonic (the ULID spec's monotonic mode): a flush that claims
two batches in one millisecond names the later one after the earlier, so that listing a
prefix gives one process's batches in claim order.
"""

from __future__ import annotations

import secrets
import threading
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80
_lock = threading.Lock()
_last = 0


def new_batch_id(now_ms: int | None = None) -> str:
    """A 26-character ULID: 48 bits of milliseconds then 80 random bits, Crockford base32."""
    global _last
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << _RANDOM_BITS) | secrets.randbits(_RANDOM_BITS)
    with _lock:
        if value >> _RANDOM_BITS == _last >> _RANDOM_BITS and value <= _last:
            value = _last + 1  # the same millisecond as the last id: the next one up, random bits carried on
        _last = value
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))
