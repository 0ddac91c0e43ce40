"""Redis staging: ordered append, atomic claim under a lease, and cleanup after upload.

Every multi-step change is one Lua script, so staging order, byte accounting
and batch membership stay consistent with any number of producers and flushes.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import redis
from redis.commands.core import Script

from batcher.errors import StagingError
from batcher.keys import Keys
from batcher.models import ClaimedBatch, StagedObject

STAGED, DUPLICATE, FULL = 1, 0, -1
SEEN_TTL_S = 7 * 24 * 3600  # a redelivered message is recognised for a week
FLUSH_REQUEST_TTL_MS = 1000  # at most one early flush request per second and lane
_READ_CHUNK_BYTES = 8 * 1024 * 1024
_READ_CHUNK_OBJECTS = 1000


@dataclass(frozen=True)
class StageOutcome:
    """What staging did: one status per object (STAGED, DUPLICATE, FULL), and whether to flush now."""

    statuses: list[int]
    flush_wanted: bool


@dataclass(frozen=True)
class QueueEntry:
    """A claimed object's place in its batch, as the queue recorded it."""

    record_id: str
    staged_ms: int
    size: int


def connect(redis_url: str) -> redis.Redis:
    """A Redis client for staging (bytes in, bytes out); raises StagingError for a bad URL."""
    try:
        return redis.Redis.from_url(redis_url, decode_responses=False, health_check_interval=30)
    except ValueError as exc:
        raise StagingError(f"S3BATCH_REDIS_URL={redis_url!r} is not a Redis URL: {exc}") from None


class Staging:
    """The staging area of one lane."""

    def __init__(self, client: redis.Redis, keys: Keys | None = None) -> None:
        self.client = client
        self.keys = keys or Keys()
        self._stage = self._script("stage.lua")
        self._claim = self._script("claim.lua")
        self._renew = self._script("renew.lua")
        self._take_over = self._script("take_over.lua")
        self._mark_uploaded = self._script("mark_uploaded.lua")
        self._drop = self._script("drop_batch.lua")
        self._record_failure = self._script("record_failure.lua")
        self._dead_letter = self._script("dead_letter.lua")
        self._revive = self._script("revive.lua")
        self._read_records = self._script("read_records.lua")

    def _script(self, name: str) -> Script:
        source = resources.files("batcher").joinpath("lua", name).read_text()
        return self.client.register_script(source)

    def stage(
        self,
        objects: Sequence[StagedObject],
        *,
        max_staged_bytes: int,
        max_batch_bytes: int,
        max_batch_objects: int,
    ) -> StageOutcome:
        """Append objects to the queue in order; raises StagingError when Redis fails."""
        keys = [self.keys.queue, self.keys.totals, self.keys.flush_requested]
        args: list[Any] = [
            max_staged_bytes,
            SEEN_TTL_S,
            max_batch_bytes,
            max_batch_objects,
            FLUSH_REQUEST_TTL_MS,
        ]
        for obj in objects:
            keys += [self.keys.record(obj.record_id), self.keys.seen(obj.record_id)]
            args += [
                obj.record_id,
                obj.staged_ms,
                obj.object_key,
                obj.body,
                obj.content_type or "",
                json.dumps(dict(obj.metadata), sort_keys=True) if obj.metadata else "",
                obj.sha256,
                obj.context or "",
            ]
        reply = cast(list[int], self._call(self._stage, keys, args, "stage objects"))
        return StageOutcome(statuses=[int(s) for s in reply[1:]], flush_wanted=bool(reply[0]))

    def clear_flush_request(self) -> None:
        """Let the next threshold crossing ask for a flush again."""
        self._redis("clear the flush request", self.client.delete, self.keys.flush_requested)

    def claim(
        self,
        *,
        now_ms: int,
        batch_id: str,
        s3_key: str,
        max_age_ms: int,
        max_objects: int,
        max_bytes: int,
        lease_ms: int,
        force: bool = False,
    ) -> ClaimedBatch | None:
        """Take the oldest objects as one batch if one is due (age, bytes, count or force), else None."""
        token = secrets.token_hex(16)
        keys = [
            self.keys.queue,
            self.keys.totals,
            self.keys.leases,
            self.keys.batch(batch_id),
            self.keys.batch_entries(batch_id),
        ]
        args = [now_ms, max_age_ms, max_objects, max_bytes, lease_ms, token, batch_id, s3_key, int(force)]
        reply = self._call(self._claim, keys, args, "claim a batch")
        if not reply:
            return None
        objects, size = cast(list[int], reply)
        return ClaimedBatch(batch_id, s3_key, now_ms, token, int(objects), int(size))

    def entries(self, batch: ClaimedBatch) -> list[QueueEntry]:
        """The batch's objects in staging order (ids, staging times and sizes, no bodies)."""
        raw = cast(
            list[bytes],
            self._redis("read a batch", self.client.lrange, self.keys.batch_entries(batch.batch_id), 0, -1),
        )
        entries = []
        for item in raw:
            ms, size, record_id = item.decode().split(" ", 2)
            entries.append(QueueEntry(record_id, int(ms), int(size)))
        return entries

    def read_heads(self, entries: Sequence[QueueEntry]) -> list[StagedObject]:
        """The staged objects of ``entries`` in order, without their bodies (``body`` is empty).

        A flush needs every key before it writes the first member (member names depend on all of them).
        """
        heads: list[StagedObject] = []
        for start in range(0, len(entries), _READ_CHUNK_OBJECTS):
            chunk = entries[start : start + _READ_CHUNK_OBJECTS]
            rows = self._read(chunk, ["key", "content_type", "metadata", "sha256", "context"])
            for entry, (key, content_type, metadata, sha256, context) in zip(chunk, rows, strict=True):
                if key is None or sha256 is None:
                    raise _missing(entry)
                heads.append(
                    StagedObject(
                        record_id=entry.record_id,
                        object_key=key.decode("utf-8"),
                        body=b"",
                        staged_ms=entry.staged_ms,
                        sha256=sha256.decode(),
                        content_type=content_type.decode() if content_type else None,
                        metadata=json.loads(metadata) if metadata else {},
                        context=context.decode() if context else None,
                    )
                )
        return heads

    def read_contexts(self, entries: Sequence[QueueEntry]) -> dict[str, str]:
        """The records' opaque contexts where they have one (no bodies are read)."""
        contexts: dict[str, str] = {}
        for start in range(0, len(entries), _READ_CHUNK_OBJECTS):
            chunk = entries[start : start + _READ_CHUNK_OBJECTS]
            for entry, (context,) in zip(chunk, self._read(chunk, ["context"]), strict=True):
                if context:
                    contexts[entry.record_id] = context.decode()
        return contexts

    def read_objects(self, heads: Sequence[StagedObject], entries: Sequence[QueueEntry]) -> Iterator[StagedObject]:
        """``heads`` (from read_heads) with their bodies, streamed a bounded chunk per round trip."""
        start = 0
        while start < len(entries):
            end, chunk_bytes = start, 0
            while end < len(entries) and end - start < _READ_CHUNK_OBJECTS and chunk_bytes < _READ_CHUNK_BYTES:
                chunk_bytes += entries[end].size
                end += 1
            rows = self._read(entries[start:end], ["body"])
            for entry, head, (body,) in zip(entries[start:end], heads[start:end], rows, strict=True):
                if body is None:
                    raise _missing(entry)
                yield StagedObject(
                    head.record_id, head.object_key, body, head.staged_ms, head.sha256, head.content_type,
                    head.metadata, head.context,
                )  # fmt: skip
            start = end

    def _read(self, entries: Sequence[QueueEntry], fields: list[str]) -> list[list[bytes | None]]:
        """``fields`` of each entry's record: one round trip and one command for the whole chunk."""
        keys = [self.keys.record(entry.record_id) for entry in entries]
        return cast(list[list[bytes | None]], self._call(self._read_records, keys, fields, "read staged objects"))

    def renew(self, batch: ClaimedBatch, lease_until_ms: int) -> bool:
        """Extend the lease; False means another flush took the batch over."""
        keys = [self.keys.leases, self.keys.batch(batch.batch_id)]
        return bool(self._call(self._renew, keys, [batch.batch_id, batch.token, lease_until_ms], "renew a lease"))

    def expired(self, now_ms: int, limit: int = 10) -> list[str]:
        """Ids of batches whose lease ran out (their flush died or stalled)."""
        raw = self._redis("list expired leases", self.client.zrangebyscore, self.keys.leases, "-inf", now_ms, 0, limit)
        return [item.decode() for item in cast(list[bytes], raw)]

    def take_over(self, batch_id: str, now_ms: int, lease_ms: int) -> ClaimedBatch | None:
        """Become the holder of an expired batch with a fresh token, or None if it is not expired."""
        token = secrets.token_hex(16)
        keys = [self.keys.leases, self.keys.batch(batch_id)]
        reply = self._call(self._take_over, keys, [batch_id, now_ms, token, now_ms + lease_ms], "take over a batch")
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
        )

    def mark_uploaded(self, batch: ClaimedBatch, etag: str, tar_bytes: int = 0, put_requests: int = 1) -> bool:
        """Record that the batch is in S3 and published; False if the lease was lost meanwhile."""
        keys = [self.keys.batch(batch.batch_id)]
        args = [batch.token, etag, tar_bytes, put_requests]
        return bool(self._call(self._mark_uploaded, keys, args, "mark a batch uploaded"))

    def delete_records(self, entries: Sequence[QueueEntry]) -> None:
        """Delete the staged bodies of an uploaded batch, in pipelined chunks."""
        for start in range(0, len(entries), _READ_CHUNK_OBJECTS):
            names = [self.keys.record(e.record_id) for e in entries[start : start + _READ_CHUNK_OBJECTS]]
            self._redis("delete staged objects", self.client.unlink, *names)

    def drop(self, batch: ClaimedBatch) -> bool:
        """Forget an uploaded batch and release its bytes from the staging budget."""
        keys = [
            self.keys.leases,
            self.keys.batch(batch.batch_id),
            self.keys.batch_entries(batch.batch_id),
            self.keys.totals,
        ]
        return bool(self._call(self._drop, keys, [batch.batch_id], "drop a batch"))

    def record_failure(self, batch: ClaimedBatch, error: str) -> int:
        """Count a failed upload; returns the attempts so far, -1 if the lease was lost."""
        keys = [self.keys.batch(batch.batch_id)]
        return int(self._call(self._record_failure, keys, [batch.token, error], "record an upload failure"))

    def dead_letter(self, batch: ClaimedBatch, error: str, now_ms: int) -> bool:
        """Park the batch (records kept) until ``revive``; False if the lease was lost."""
        keys = [self.keys.leases, self.keys.dead, self.keys.batch(batch.batch_id)]
        args = [batch.batch_id, batch.token, error, now_ms]
        return bool(self._call(self._dead_letter, keys, args, "dead-letter a batch"))

    def revive(self, batch_id: str, now_ms: int) -> bool:
        """Make a dead-lettered batch due again with a fresh retry budget; False if it is not dead."""
        keys = [self.keys.leases, self.keys.dead, self.keys.batch(batch_id)]
        return bool(self._call(self._revive, keys, [batch_id, now_ms], "revive a batch"))

    def dead_letters(self) -> list[dict[str, str]]:
        """Each dead-lettered batch: batch_id, s3_key, objects, bytes, attempts, last_error, dead_ms."""
        ids = cast(list[bytes], self._redis("list dead letters", self.client.zrange, self.keys.dead, 0, -1))
        pipe = self.client.pipeline(transaction=False)
        for batch_id in ids:
            pipe.hgetall(self.keys.batch(batch_id.decode()))
        rows = cast(list[dict[bytes, bytes]], self._redis("read dead letters", pipe.execute))
        return [{k.decode(): v.decode() for k, v in row.items() if k != b"token"} for row in rows]

    def totals(self) -> dict[str, int]:
        """Counters: staged_bytes, queued_bytes, queued_objects, batches_in_flight, oldest_staged_ms,
        dead_letters."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.totals)
        pipe.zcard(self.keys.leases)
        pipe.lindex(self.keys.queue, 0)
        pipe.zcard(self.keys.dead)
        raw, in_flight, head, dead = self._redis("read staging totals", pipe.execute)
        result = {k.decode(): int(v) for k, v in cast(dict[bytes, bytes], raw).items()}
        result.setdefault("staged_bytes", 0)
        result.setdefault("queued_bytes", 0)
        result.setdefault("queued_objects", 0)
        result["batches_in_flight"] = int(in_flight)
        result["oldest_staged_ms"] = int(head.split(b" ", 1)[0]) if head else 0
        result["dead_letters"] = int(dead)
        return result

    def _call(self, script: Script, keys: list[str], args: list[Any], what: str) -> Any:
        try:
            return script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise StagingError(f"Redis refused to {what}: {exc}") from exc

    def _redis(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except redis.RedisError as exc:
            raise StagingError(f"Redis refused to {what}: {exc}") from exc


def _missing(entry: QueueEntry) -> StagingError:
    return StagingError(
        f"staged record {entry.record_id} is missing from Redis (was Redis flushed, or restarted without "
        "appendonly persistence?)"
    )
