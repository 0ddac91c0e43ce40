"""The staging Redis's clock, which every worker host reads the same way.

Lease ends, batch ages and claim times are compared between hosts (a lease written by one worker is judged
expired by another), so they must come from one clock: a worker whose wall clock is minutes ahead would
otherwise take over every live lease and find nothing ever due that a worker behind it staged. The Redis
server's ``TIME`` is sampled once per flush and advanced with this host's monotonic clock in between, so that
a step of the local wall clock changes nothing either.
"""

from __future__ import annotations

import time
from typing import Any

from batcher.errors import StagingError

RESAMPLE_S = 10.0  # a flush samples at its start anyway; this bounds a long one (monotonic drift is tiny)


class ServerClock:
    """Milliseconds since the epoch by the Redis server's clock; ``now_ms()`` raises StagingError when Redis fails."""

    def __init__(self, client: Any) -> None:
        self.client = client
        # (server ms, monotonic s when read): one tuple, replaced whole, so that threads never see half a sample.
        self._sample = (0.0, -RESAMPLE_S)

    def sample(self) -> None:
        """Read the server's TIME now (one round trip)."""
        before = time.monotonic()
        try:
            reply = self.client.time()
        except Exception as exc:  # redis.RedisError, or a cluster without a node answering
            raise StagingError(f"Redis refused to tell the time: {exc}") from exc
        after = time.monotonic()
        if isinstance(reply, dict):  # a Redis Cluster client asks every node: any one will do
            reply = next(iter(reply.values()))
        seconds, microseconds = reply
        self._sample = (int(seconds) * 1000 + int(microseconds) / 1000, (before + after) / 2)

    def now_ms(self) -> int:
        """The server's time now, from the last sample (taken again when it is RESAMPLE_S old)."""
        if time.monotonic() - self._sample[1] >= RESAMPLE_S:
            self.sample()
        server_ms, at = self._sample
        return int(server_ms + (time.monotonic() - at) * 1000)
