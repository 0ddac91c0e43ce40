"""Redis staging: ordered append, atomic claim under a lease, and cleanup after upload.

Every multi-step change is one Lua script, so staging order, byte accounting
and batch membership stay consistent with any number of producers and flushes.
The scripts are read and hashed once per process and sent to a server only
the first time it does not know them (EVALSHA, then SCRIPT LOAD).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any, cast

import redis
from redis.commands.core import Script

from batcher.config import Settings
from batcher.errors import StagingError
from batcher.keys import Keys
from batcher.models import ClaimedBatch, StagedObject
from batcher.records import BODY_FIELD, HEAD_FIELD, new_epoch, pack, parse_entry, unpack_head

STAGED, DUPLICATE, FULL, CONFLICT = 1, 0, -1, -2
SEEN_TTL_S = 7 * 24 * 3600  # a redelivered message is recognised for a week
FLUSH_REQUEST_TTL_MS = 1000  # at most one early flush request per second and lane
_READ_CHUNK_BYTES = 8 * 1024 * 1024
_READ_CHUNK_OBJECTS = 1000


def _load_scripts() -> dict[str, Script]:
    """Every script of batcher/lua with the shared prelude after its first line (a ``#!lua`` flags line)."""
    folder = resources.files("batcher").joinpath("lua")
    prelude = folder.joinpath("prelude.lua").read_text()
    scripts: dict[str, Script] = {}
    for item in folder.iterdir():
        if item.name.endswith(".lua") and item.name != "prelude.lua":
            first, _, rest = item.read_text().partition("\n")
            source = f"{first}\n{prelude}\n{rest}" if first.startswith("#!lua") else f"{prelude}\n{first}\n{rest}"
            # No registered client: every call names its own (bytes need no encoder to be hashed).
            scripts[item.name.removesuffix(".lua")] = Script(cast(Any, None), source.encode())
    return scripts


_SCRIPTS = _load_scripts()


@dataclass(frozen=True)
class StagingLimits:
    """The rules staging enforces: how much it holds, when a batch is due, how long a lease lasts."""

    max_staged_bytes: int
    max_batch_bytes: int
    max_batch_objects: int
    max_batch_age_ms: int
    lease_ms: int
    replicas: int = 0
    """Replicas that must hold a staged object (Redis WAIT) before staging reports it."""
    replicas_timeout_ms: int = 5000

    @classmethod
    def from_settings(cls, settings: Settings) -> StagingLimits:
        return cls(
            max_staged_bytes=settings.max_staged_bytes,
            max_batch_bytes=settings.max_batch_bytes,
            max_batch_objects=settings.max_batch_objects,
            max_batch_age_ms=int(settings.max_batch_age_s * 1000),
            lease_ms=int(settings.lease_s * 1000),
            replicas=settings.staging_replicas,
        )


@dataclass(frozen=True)
class StageOutcome:
    """What staging did: one status per object (STAGED, DUPLICATE, FULL, CONFLICT), whether to flush now, and
    the epoch of the lane's staged data (empty when nothing was ever staged there)."""

    statuses: list[int]
    flush_wanted: bool
    """Ask a worker to flush now (at most once a second and lane)."""
    epoch: str = ""
    first_ms: int = 0
    """The staging time of the first object when the lane was empty before (it just got work), else 0."""
    full: bool = False
    """The lane holds a full batch: it is due now."""


class Staging:
    """The staging area of one lane, with the limits it enforces."""

    def __init__(self, client: Any, limits: StagingLimits, keys: Keys) -> None:
        self.client = client
        self.limits = limits
        self.keys = keys

    def with_limits(self, **changes: int) -> Staging:
        """The same lane and client under other limits (StagingLimits field names)."""
        return Staging(self.client, replace(self.limits, **changes), self.keys)

    def stage(self, objects: Sequence[StagedObject]) -> StageOutcome:
        """Append objects to the queue in order; raises StagingError when Redis fails."""
        limits = self.limits
        keys = [self.keys.queue, self.keys.totals, self.keys.flush_requested, self.keys.epoch]
        args: list[Any] = [
            limits.max_staged_bytes,
            SEEN_TTL_S,
            limits.max_batch_bytes,
            limits.max_batch_objects,
            FLUSH_REQUEST_TTL_MS,
            new_epoch(),
        ]
        for obj in objects:
            keys += [self.keys.record(obj.record_id), self.keys.seen(obj.record_id)]
            args += pack(obj)
        reply = cast(list[Any], self._call_replicated("stage", keys, args, "stage objects"))
        wanted = int(reply[0])  # 2: ask for a flush, 1: full but asked lately, 0: not full
        return StageOutcome(
            statuses=[int(s) for s in reply[3:]],
            flush_wanted=wanted == 2,
            epoch=_text(reply[1]),
            first_ms=int(reply[2]),
            full=wanted >= 1,
        )

    def epoch(self) -> str:
        """The epoch of this lane's staged data, or "" when there is none (nothing staged since Redis started
        empty)."""
        return _text(self._redis("read the staging epoch", self.client.get, self.keys.epoch))

    def claim(self, *, now_ms: int, batch_id: str, s3_key: str, force: bool = False) -> tuple[ClaimedBatch | None, int]:
        """Take the oldest objects as one batch if one is due (age, bytes, count or force); with it, the lane's
        due score for what is left (batcher.lanes; 0 when nothing is left)."""
        token = secrets.token_hex(16)
        limits = self.limits
        keys = [
            self.keys.queue,
            self.keys.totals,
            self.keys.leases,
            self.keys.batch(batch_id),
            self.keys.batch_entries(batch_id),
            self.keys.waiting,
            self.keys.epoch,
        ]
        args = [
            now_ms, limits.max_batch_age_ms, limits.max_batch_objects, limits.max_batch_bytes, limits.lease_ms,
            token, batch_id, s3_key, int(force),
        ]  # fmt: skip
        objects, size, epoch, due_score = cast(list[Any], self._call("claim", keys, args, "claim a batch"))
        if not int(objects):
            return None, int(due_score)
        batch = ClaimedBatch(
            batch_id, s3_key, now_ms, token, int(objects), int(size), epoch=_text(epoch), lane=self.keys.lane
        )
        return batch, int(due_score)

    def earliest_lease_ms(self) -> int:
        """When the earliest lease of this lane's claimed batches ends (ms), 0 when there is none."""
        raw = self._redis("read the leases", lambda: self.client.zrange(self.keys.leases, 0, 0, withscores=True))
        return int(raw[0][1]) if raw else 0

    def record_ids(self, batch: ClaimedBatch) -> list[str]:
        """The record ids of the batch's objects, in staging order (what is needed to answer or delete them)."""
        return [parse_entry(entry)[2] for entry in self._entries(batch)]

    def heads(self, batch: ClaimedBatch) -> list[StagedObject]:
        """The batch's objects in staging order, without their bodies (``size`` says how long each is).

        A flush needs every key before it writes the first member (member names depend on all of them).
        """
        entries = self._entries(batch)
        heads: list[StagedObject] = []
        for start in range(0, len(entries), _READ_CHUNK_OBJECTS):
            chunk = entries[start : start + _READ_CHUNK_OBJECTS]
            record_ids = [parse_entry(entry)[2] for entry in chunk]
            for entry, record_id, (head,) in zip(chunk, record_ids, self._read(record_ids, HEAD_FIELD), strict=True):
                if head is None:
                    raise _missing(record_id)
                heads.append(unpack_head(entry, head))
        return heads

    def with_bodies(self, heads: Sequence[StagedObject]) -> Iterator[StagedObject]:
        """``heads`` with their bodies, streamed a bounded chunk (bytes and objects) per round trip."""
        start = 0
        while start < len(heads):
            end, chunk_bytes = start, 0
            while end < len(heads) and end - start < _READ_CHUNK_OBJECTS and chunk_bytes < _READ_CHUNK_BYTES:
                chunk_bytes += heads[end].size
                end += 1
            chunk = heads[start:end]
            for head, (body,) in zip(chunk, self._read([h.record_id for h in chunk], BODY_FIELD), strict=True):
                if body is None:
                    raise _missing(head.record_id)
                yield replace(head, body=body)
            start = end

    def _entries(self, batch: ClaimedBatch) -> list[bytes]:
        raw = self._redis("read a batch", self.client.lrange, self.keys.batch_entries(batch.batch_id), 0, -1)
        return cast(list[bytes], raw)

    def _read(self, record_ids: Sequence[str], field: bytes) -> list[list[bytes | None]]:
        """One field of each record: one round trip and one command for the whole chunk."""
        keys = [self.keys.record(record_id) for record_id in record_ids]
        return cast(list[list[bytes | None]], self._call("read_records", keys, [field], "read staged objects"))

    def renew(self, batch: ClaimedBatch, lease_until_ms: int) -> bool:
        """Extend the lease; False means another flush took the batch over."""
        keys = [self.keys.leases, self.keys.batch(batch.batch_id)]
        return bool(self._call("renew", keys, [batch.batch_id, batch.token, lease_until_ms], "renew a lease"))

    def expired(self, now_ms: int, limit: int = 10) -> list[str]:
        """Ids of batches whose lease ran out (their flush died or stalled)."""
        raw = self._redis("list expired leases", self.client.zrangebyscore, self.keys.leases, "-inf", now_ms, 0, limit)
        return [item.decode() for item in cast(list[bytes], raw)]

    def take_over(self, batch_id: str, now_ms: int) -> ClaimedBatch | None:
        """Become the holder of an expired batch with a fresh token, or None if it is not expired."""
        token = secrets.token_hex(16)
        keys = [self.keys.leases, self.keys.batch(batch_id)]
        args = [batch_id, now_ms, token, now_ms + self.limits.lease_ms]
        reply = self._call("take_over", keys, args, "take over a batch")
        if not reply:
            return None
        flat = cast(list[bytes], reply)
        fields = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
        return ClaimedBatch(
            batch_id=batch_id,
            s3_key=fields["s3_key"],
            created_ms=int(fields["created_ms"]),
            token=token,
            objects=int(fields["objects"]),
            size_bytes=int(fields["bytes"]),
            state=fields["state"],
            epoch=fields.get("epoch", ""),
            lane=self.keys.lane,
        )

    def mark_uploaded(self, batch: ClaimedBatch, etag: str, tar_bytes: int = 0, put_requests: int = 1) -> bool:
        """Record that the batch is in S3 and published; False if the lease was lost meanwhile."""
        keys = [self.keys.batch(batch.batch_id)]
        args = [batch.token, etag, tar_bytes, put_requests]
        return bool(self._call("mark_uploaded", keys, args, "mark a batch uploaded"))

    def delete_records(self, record_ids: Sequence[str]) -> None:
        """Delete the staged records of an uploaded batch, a chunk per command."""
        for start in range(0, len(record_ids), _READ_CHUNK_OBJECTS):
            names = [self.keys.record(record_id) for record_id in record_ids[start : start + _READ_CHUNK_OBJECTS]]
            self._redis("delete staged objects", self.client.unlink, *names)

    def drop(self, batch: ClaimedBatch, now_ms: int) -> bool:
        """Forget an uploaded batch and release its bytes from the staging budget."""
        keys = [
            self.keys.leases,
            self.keys.batch(batch.batch_id),
            self.keys.batch_entries(batch.batch_id),
            self.keys.totals,
            self.keys.waiting,
        ]
        return bool(self._call("drop_batch", keys, [batch.batch_id, now_ms], "drop a batch"))

    def record_failure(self, batch: ClaimedBatch, error: str, now_ms: int) -> tuple[int, int]:
        """Count a failed upload round; returns (rounds so far, when the first failed in ms), (-1, 0) if the lease
        was lost."""
        keys = [self.keys.batch(batch.batch_id), self.keys.totals]
        attempts, first_ms = cast(list[int], self._call("record_failure", keys, [batch.token, error, now_ms],
                                                        "record an upload failure"))  # fmt: skip
        return int(attempts), int(first_ms or 0)

    def dead_letter(self, batch: ClaimedBatch, error: str, now_ms: int, *, transient: bool) -> bool:
        """Park the batch (records kept) until ``revive``; False if the lease was lost.

        A ``transient`` one (its retry budget ran out) is revived by the flush once S3 answers again.
        """
        keys = [self.keys.leases, self.keys.dead, self.keys.batch(batch.batch_id)]
        args = [batch.batch_id, batch.token, error, now_ms, "transient" if transient else "permanent"]
        return bool(self._call("dead_letter", keys, args, "dead-letter a batch"))

    def rekey(self, batch: ClaimedBatch, batch_id: str, s3_key: str, now_ms: int) -> ClaimedBatch | None:
        """The batch under a new id and S3 key (its old key holds another object), or None if the lease was lost."""
        old, new = batch.batch_id, batch_id
        keys = [
            self.keys.leases, self.keys.waiting, self.keys.batch(old), self.keys.batch_entries(old),
            self.keys.batch(new), self.keys.batch_entries(new),
        ]  # fmt: skip
        args = [batch.batch_id, batch.token, batch_id, s3_key, now_ms]
        if not self._call("rekey", keys, args, "give a batch a new key"):
            return None
        return replace(batch, batch_id=batch_id, s3_key=s3_key, created_ms=now_ms)

    def revive(self, batch_id: str, now_ms: int) -> bool:
        """Make a dead-lettered batch due again with a fresh retry budget; False if it is not dead."""
        keys = [self.keys.leases, self.keys.dead, self.keys.batch(batch_id)]
        return bool(self._call("revive", keys, [batch_id, now_ms], "revive a batch"))

    def dead_letters(self) -> list[dict[str, str]]:
        """Each dead-lettered batch: batch_id, s3_key, objects, bytes, attempts, last_error, dead_ms, dead_reason."""
        ids = cast(list[bytes], self._redis("list dead letters", self.client.zrange, self.keys.dead, 0, -1))
        pipe = self.client.pipeline(transaction=False)
        for batch_id in ids:
            pipe.hgetall(self.keys.batch(batch_id.decode()))
        rows = cast(list[dict[bytes, bytes]], self._redis("read dead letters", pipe.execute))
        return [{k.decode(): v.decode() for k, v in row.items() if k != b"token"} for row in rows]

    def totals(self) -> dict[str, int]:
        """Counters (Keys.totals) and: batches_in_flight, dead_letters, oldest_staged_ms (the queue's head),
        oldest_waiting_ms (the oldest object not yet in S3, queued or in a claimed batch), epoch_ms (when the
        lane's staged data began; 0 when there is none); 0 where there is nothing."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.totals)
        pipe.zcard(self.keys.leases)
        pipe.lindex(self.keys.queue, 0)
        pipe.zcard(self.keys.dead)
        pipe.zrange(self.keys.waiting, 0, 0, withscores=True)
        pipe.get(self.keys.epoch)
        raw, in_flight, head, dead, oldest_batch, epoch = self._redis("read staging totals", pipe.execute)
        result = {k.decode(): int(v) for k, v in cast(dict[bytes, bytes], raw).items()}
        for name in ("staged_bytes", "queued_bytes", "queued_objects", "failed_rounds", "lost_objects"):
            result.setdefault(name, 0)
        result["batches_in_flight"] = int(in_flight)
        result["dead_letters"] = int(dead)
        result["oldest_staged_ms"] = parse_entry(head)[0] if head else 0
        oldest = [ms for ms in (result["oldest_staged_ms"], int(oldest_batch[0][1]) if oldest_batch else 0) if ms]
        result["oldest_waiting_ms"] = min(oldest, default=0)
        result["epoch_ms"] = int(epoch.split(b" ")[1]) if epoch and b" " in epoch else 0
        return result

    def missing_records(self, record_ids: Sequence[str]) -> set[str]:
        """The ones of ``record_ids`` this lane holds no record of (a chunk per command)."""
        missing: set[str] = set()
        for start in range(0, len(record_ids), _READ_CHUNK_OBJECTS):
            chunk = record_ids[start : start + _READ_CHUNK_OBJECTS]
            pipe = self.client.pipeline(transaction=False)
            for record_id in chunk:
                pipe.exists(self.keys.record(record_id))
            found = self._redis("look for staged records", pipe.execute)
            missing.update(record_id for record_id, exists in zip(chunk, found, strict=True) if not exists)
        return missing

    def count_lost(self, objects: int) -> None:
        """Add ``objects`` whose staged data was lost (an earlier epoch) to the lifetime counter."""
        self._redis("count lost objects", self.client.hincrby, self.keys.totals, "lost_objects", objects)

    def _call(self, script: str, keys: list[str], args: list[Any], what: str) -> Any:
        try:
            return _SCRIPTS[script](keys=keys, args=args, client=self.client)
        except redis.RedisError as exc:
            raise StagingError(f"Redis refused to {what}: {exc}") from exc

    def _call_replicated(self, script: str, keys: list[str], args: list[Any], what: str) -> Any:
        """``_call``, then, with ``limits.replicas``, Redis WAIT on the same connection: StagingError unless that many
        replicas hold the change within ``replicas_timeout_ms`` (a failover could lose it)."""
        wanted = self.limits.replicas
        if not wanted:
            return self._call(script, keys, args, what)
        try:
            pipe = self.client.pipeline(transaction=False)
            _SCRIPTS[script](keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", wanted, self.limits.replicas_timeout_ms)
            reply, confirmed = pipe.execute()
        except redis.RedisError as exc:
            raise StagingError(f"Redis refused to {what}: {exc}") from exc
        if int(confirmed) < wanted:
            raise StagingError(
                f"only {confirmed} of the {wanted} replicas S3BATCH_STAGING_REPLICAS asks for confirmed the staged "
                f"objects within {self.limits.replicas_timeout_ms} ms; they may be lost in a failover: send them again"
            )
        return reply

    def _redis(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except redis.RedisError as exc:
            raise StagingError(f"Redis refused to {what}: {exc}") from exc


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _missing(record_id: str) -> StagingError:
    return StagingError(
        f"staged record {record_id} is missing from Redis (was Redis flushed, or restarted without "
        "appendonly persistence?)"
    )
