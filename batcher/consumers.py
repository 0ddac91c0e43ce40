"""Which workers serve which queues, as each reports every few seconds, so that producers never wait blind.

One Redis hash (``Keys.consumers``) maps a worker's name to ``"<ms> <queue>,<queue>..."``: when it last
reported and what it consumes. A worker that stops cleanly removes its entry; one that dies stops reporting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import redis

from batcher.errors import StagingError
from batcher.keys import IndexKeys

REPORT_INTERVAL_S = 2.0
FORGET_AFTER_MS = 24 * 3600 * 1000  # entries of workers gone for a day are removed by the next report


class Consumers:
    """The registry of live consumers in the staging Redis."""

    def __init__(self, client: redis.Redis, keys: IndexKeys | None = None) -> None:
        self.client = client
        self.key = (keys or IndexKeys()).consumers

    def report(self, worker: str, queues: Sequence[str], now_ms: int) -> None:
        """Say that ``worker`` is alive and consumes ``queues``."""
        try:
            self.client.hset(self.key, worker, f"{now_ms} {','.join(queues)}")
            stale = [name for name, last in self._entries().items() if now_ms - last[0] > FORGET_AFTER_MS]
            if stale:
                self.client.hdel(self.key, *stale)
        except redis.RedisError as exc:
            raise StagingError(f"Redis refused the heartbeat of worker {worker}: {exc}") from exc

    def forget(self, worker: str) -> None:
        """Remove ``worker`` (it stops cleanly)."""
        try:
            self.client.hdel(self.key, worker)
        except redis.RedisError as exc:
            raise StagingError(f"Redis refused to forget worker {worker}: {exc}") from exc

    def serving(self, queue: str, now_ms: int, within_ms: int) -> list[str]:
        """The workers that reported consuming ``queue`` in the last ``within_ms``."""
        try:
            entries = self._entries()
        except redis.RedisError as exc:
            raise StagingError(f"Redis refused to list the workers: {exc}") from exc
        return sorted(name for name, (ms, queues) in entries.items() if now_ms - ms <= within_ms and queue in queues)

    def _entries(self) -> dict[str, tuple[int, list[str]]]:
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.key))
        entries = {}
        for name, value in raw.items():
            ms, _, queues = value.decode().partition(" ")
            entries[name.decode()] = (int(ms), queues.split(",") if queues else [])
        return entries
