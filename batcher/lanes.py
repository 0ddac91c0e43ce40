"""The lanes of every partition, and the indexes that let a flush find work without looking at each lane.

A flush must find what is due among thousands of partitions at the cost of a few commands: producers put a
lane into ``due`` when it goes from empty to staged, scored by when its oldest object was staged, or when it
fills a batch, scored 0 (due whatever the age); a flush takes the lanes whose score is at least its own
S3BATCH_MAX_BATCH_AGE old (so a lowered age applies to what is already staged), claims from each, then scores
the lane by what is left, or takes it out when nothing is left and nobody scored it again meanwhile. Claimed
batches put their lane into ``leased`` (scored by the earliest end of a lease), dead letters into ``dead``.

These indexes are single keys, written next to the lane's own scripts, not inside them (a lane's keys live in
its own Redis Cluster slot): a process that dies between the two leaves a lane out of an index, and ``sweep``,
run by one flush a minute, puts such lanes back.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.commands.core import Script

from batcher.config import Settings
from batcher.connection import connect
from batcher.errors import StagingError
from batcher.keys import IndexKeys, Keys
from batcher.partitions import Partition, default_partition, partition_id_of
from batcher.staging import Staging, StagingLimits

SWEEP_EVERY_MS = 60_000
DUE_PER_TICK = 256  # lanes a flush looks at per tick (the most overdue first)

# Score a lane by what a flush found left in it, or take it out only if no producer scored it since the flush
# read ``seen`` (KEYS: the index ZSET; ARGV: lane, seen score, next score or '').
_SETTLE = Script(
    cast(Any, None),
    b"""
local current = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
if current and tonumber(current) == tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
""",
)


@dataclass(frozen=True)
class LaneState:
    """What one lane holds, as ``stats`` and ``sweep`` read it."""

    lane: str
    partition: Partition | None
    totals: dict[str, int]


class Lanes:
    """Every lane of every partition in one staging Redis: their Staging objects and the indexes over them."""

    def __init__(self, client: Any, settings: Settings, keys: IndexKeys | None = None) -> None:
        self.client = client
        self.settings = settings
        self.limits = StagingLimits.from_settings(settings)
        self.keys = keys or IndexKeys()
        self._staging: dict[str, Staging] = {}
        self._partitions: dict[str, Partition] = {}
        self._registered: set[str] = set()

    @classmethod
    def for_settings(cls, settings: Settings) -> Lanes:
        """The lanes of the staging Redis that ``settings`` name (any topology, batcher.connection)."""
        return cls(connect(settings.redis_url, settings.redis_sentinel_master), settings)

    def default_lane(self) -> Staging:
        """The first lane of the default partition (S3BATCH_BUCKET, S3BATCH_PREFIX), registered."""
        partition = default_partition(self.settings)
        self.register(partition, partition.lane(0))
        return self.staging(partition.lane(0))

    # ---- lanes and partitions ----

    def staging(self, lane: str) -> Staging:
        """The staging area of ``lane`` (one client shared by all)."""
        found = self._staging.get(lane)
        if found is None:
            found = self._staging[lane] = Staging(self.client, self.limits, Keys(lane))
        return found

    def register(self, partition: Partition, lane: str) -> None:
        """Record the lane and its partition (once per process): stats, sweeps and flushes find them."""
        if lane in self._registered:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.hsetnx(self.keys.partitions, partition.id, partition.encode())
        pipe.sadd(self.keys.lanes, lane)
        self._redis("register a lane", pipe.execute)
        self._partitions[partition.id] = partition
        self._registered.add(lane)

    def keep(self, lane: str) -> None:
        """List ``lane`` among the lanes again (its partition may be unknown: Redis lost it)."""
        self._redis("list a lane", self.client.sadd, self.keys.lanes, lane)

    def partition_of(self, lane: str) -> Partition:
        """The bucket and prefix of ``lane``'s batches; StagingError when the lane was never registered."""
        partition_id = partition_id_of(lane)
        found = self._partitions.get(partition_id)
        if found is None:
            raw = self._redis("read a partition", self.client.hget, self.keys.partitions, partition_id)
            if raw is None:
                raise StagingError(f"lane {lane} has no partition in {self.keys.partitions} (was Redis flushed?)")
            found = self._partitions[partition_id] = Partition.decode(raw)
        return found

    def all(self) -> list[str]:
        """Every lane that ever staged, sorted."""
        return sorted(item.decode() for item in self._redis("list the lanes", self.client.smembers, self.keys.lanes))

    # ---- due lanes ----

    def mark_due(self, lane: str, oldest_ms: int) -> None:
        """``lane``'s oldest queued object was staged at ``oldest_ms`` (0: it holds a full batch, due now)."""
        self._redis("index a due lane", self.client.zadd, self.keys.due, {lane: oldest_ms})

    def due(self, now_ms: int, limit: int = DUE_PER_TICK) -> list[tuple[str, float]]:
        """(lane, score) of the lanes with a batch due by ``now_ms``, the most overdue first."""
        return self._scored("list due lanes", self.keys.due, now_ms - self.limits.max_batch_age_ms, limit)

    def settle_due(self, lane: str, seen: float, score: int) -> None:
        """After a claim: ``lane``'s due score for what is left (Staging.claim), out of the index when it is 0."""
        self._settle(self.keys.due, lane, seen, score or None)

    # ---- leased lanes ----

    def mark_leased(self, lane: str, until_ms: int) -> None:
        """``lane`` has a batch whose lease ends at ``until_ms`` (keeps an earlier end)."""
        self._redis("index a leased lane", lambda: self.client.zadd(self.keys.leased, {lane: until_ms}, lt=True))

    def leased(self, now_ms: int, limit: int = DUE_PER_TICK) -> list[tuple[str, float]]:
        """(lane, score) of the lanes whose earliest lease may have ended by ``now_ms``."""
        return self._scored("list leased lanes", self.keys.leased, now_ms, limit)

    def settle_leased(self, lane: str, seen: float) -> None:
        """Score ``lane`` by its earliest lease now, or take it out when it has none."""
        earliest = self.staging(lane).earliest_lease_ms()
        self._settle(self.keys.leased, lane, seen, earliest)

    # ---- dead letters ----

    def mark_dead(self, lane: str) -> None:
        self._redis("index a dead lane", self.client.sadd, self.keys.dead, lane)

    def dead(self) -> list[str]:
        """The lanes that have (or had, until a sweep or a revival says otherwise) dead-lettered batches."""
        return sorted(item.decode() for item in self._redis("list dead lanes", self.client.smembers, self.keys.dead))

    def settle_dead(self, lane: str) -> None:
        """Take ``lane`` out of the dead index when it has no dead letters left."""
        if self.staging(lane).totals()["dead_letters"] == 0:
            self._redis("unindex a dead lane", self.client.srem, self.keys.dead, lane)

    # ---- rate limits ----

    def take_turn(self, key: str, every_ms: int) -> bool:
        """True for one caller per ``every_ms`` (for ``key``, one of IndexKeys' locks)."""
        return bool(self._redis("take a turn", lambda: self.client.set(key, b"1", px=every_ms, nx=True)))

    # ---- repairs and reports ----

    def sweep(self, now_ms: int) -> int:
        """Put back into the indexes the lanes a dead process left out; how many were repaired."""
        repaired = 0
        for state in self.states():
            lane, totals = state.lane, state.totals
            head_ms = totals["oldest_staged_ms"]
            pipe = self.client.pipeline(transaction=False)
            pipe.zscore(self.keys.due, lane)
            pipe.zscore(self.keys.leased, lane)
            due_score, leased_score = self._redis("check the indexes", pipe.execute)
            if head_ms and due_score is None:
                self.mark_due(lane, head_ms)
                repaired += 1
            earliest = self.staging(lane).earliest_lease_ms()
            if earliest and leased_score is None:
                self.mark_leased(lane, earliest)
                repaired += 1
            if totals["dead_letters"]:
                self.mark_dead(lane)
        return repaired

    def states(self) -> Iterator[LaneState]:
        """Every lane's partition and counters (Staging.totals)."""
        for lane in self.all():
            try:
                partition: Partition | None = self.partition_of(lane)
            except StagingError:
                partition = None
            yield LaneState(lane, partition, self.staging(lane).totals())

    def _scored(self, what: str, key: str, now_ms: int, limit: int) -> list[tuple[str, float]]:
        raw = self._redis(
            what, lambda: self.client.zrangebyscore(key, "-inf", now_ms, start=0, num=limit, withscores=True)
        )
        return [(lane.decode(), float(score)) for lane, score in raw]

    def _settle(self, key: str, lane: str, seen: float, next_ms: int | None) -> None:
        try:
            _SETTLE(keys=[key], args=[lane, seen, "" if next_ms is None else next_ms], client=self.client)
        except redis.RedisError as exc:
            raise StagingError(f"Redis refused to update {key}: {exc}") from exc

    def _redis(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except redis.RedisError as exc:
            raise StagingError(f"Redis refused to {what}: {exc}") from exc
