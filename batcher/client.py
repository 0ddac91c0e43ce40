"""The direct staging path: a producer stages objects straight into Redis, without a message per object.

Validation, staging, the STAGED state and the flush request are exactly those of the
``put_object`` task, so the flush completes these objects like any other. Where results
are stored and how a caller waits for them belongs to the ResultChannel passed in;
``workers.Batcher`` is this class bound to the s3batch Celery app's results.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Generic, Protocol, Self, TypeVar

from batcher.config import Settings
from batcher.errors import ConfigError, InputError, StagingError
from batcher.lanes import Lanes
from batcher.models import StagedObject
from batcher.partitions import Partition, producer_lane, resolve
from batcher.preflight import check_staging
from batcher.producer import full_error, prepare_object, reused_error, stage_into
from batcher.staging import CONFLICT, FULL, STAGED

H = TypeVar("H")
G = TypeVar("G")
G_co = TypeVar("G_co", covariant=True)

CHUNK_OBJECTS = 500  # objects per staging round trip: one Lua call, a few ms of Redis time
CHUNK_BYTES = 4 * 1024 * 1024
FULL_WAIT_S = 30.0  # how long a producer waits for room while staging is full before giving up

Item = tuple[Any, ...] | Mapping[str, Any]
"""``(key, body)``, ``(key, body, content_type)``, ``(key, body, content_type, metadata)`` or a mapping with
those names and, for another partition than the default, ``bucket`` and ``prefix``."""


class ResultChannel(Protocol[H, G_co]):
    """Stores the states of directly staged objects and makes the handles their callers wait on."""

    def staged(self, objects: Sequence[StagedObject], lane: str, epoch: str) -> None:
        """Store STAGED for each object, staged in ``lane`` during ``epoch`` (one round trip for all of them where
        the backend allows)."""

    def refuse(self, record_id: str, error: Exception) -> None:
        """Store FAILURE for an object that was never staged."""

    def handle(self, record_id: str) -> H:
        """A handle with ``state``, ``ready()`` and ``get(timeout)``."""

    def group(self, handles: list[H]) -> G_co:
        """Handles a caller can wait for together, without a round trip per object."""

    def request_flush(self) -> None:
        """Ask a worker to flush now: a batch has reached its size or count."""


class Batcher(Generic[H, G]):
    """Stages objects from this process; ``put_objects`` keeps the order of its items within each partition.

    Use one Batcher per process (it holds a Redis connection pool); it is safe to share between threads. Its
    objects go to one lane of each partition (batcher.partitions), so that they keep their order.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        channel: ResultChannel[H, G] | None = None,
        full_wait_s: float = FULL_WAIT_S,
        lane: int | None = None,
    ) -> None:
        """``lane`` is the lane of each partition this producer keeps to (one chosen from the process by default).

        Raises ConfigError at once when the staging Redis cannot be used (unreachable, refused credentials).
        """
        if channel is None:
            raise ConfigError(
                "batcher.Batcher needs the result channel its callers wait on: use workers.Batcher for Celery "
                "results, or pass channel="
            )
        self.settings = settings or Settings.from_env()
        self.lanes = Lanes.for_settings(self.settings)
        check_staging(self.lanes.client, self.settings)
        self.lane_index = producer_lane(self.settings) if lane is None else lane % self.settings.lanes
        self.channel: ResultChannel[H, G] = channel
        self.full_wait_s = full_wait_s

    def put_object(
        self,
        key: str,
        body: bytes,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        *,
        bucket: str | None = None,
        prefix: str | None = None,
    ) -> H:
        """Stage one object and return its handle (STAGED now, SUCCESS with the BatchRef dict once uploaded).

        ``bucket`` and ``prefix`` name its partition (S3BATCH_BUCKET and S3BATCH_PREFIX by default). Raises an
        InputError subclass for bad input (InvalidBucketError for a bucket S3BATCH_BUCKETS does not allow),
        StagingFullError when staging has no room for ``full_wait_s`` in a row, StagingError when Redis (staging
        or the result backend) fails.
        """
        partition = resolve(self.settings, bucket, prefix)
        obj = prepare_object(self.settings, _new_id(), key, body, content_type, metadata)
        if self._stage(partition, [obj], set()):
            raise full_error(self.lanes.staging(partition.lane(self.lane_index)), obj)
        return self.channel.handle(obj.record_id)

    def put_objects(self, items: Iterable[Item]) -> G:
        """Stage many objects, a few hundred per round trip, and return their handles as one group, in input order.

        Objects of one partition are staged in input order. An item with bad input gets a FAILURE result saying
        why and stages nothing; the others go on. Raises StagingFullError when staging has no room for
        ``full_wait_s`` in a row, StagingError when Redis (staging or the result backend) fails; either way its
        ``accepted`` holds, in input order, the results of every item that was decided: staged (they will be
        uploaded) or refused (they have FAILURE); with one partition, the items before the first one not staged.
        """
        handles: list[tuple[str, H]] = []
        decided: set[str] = set()  # staged, or refused for bad input
        # One chunk is staged by a thread while the next is validated and hashed here: the Redis round trip and
        # its scripts' run overlap with the Python work (one stager keeps the chunks in order).
        staging: Future[tuple[Partition, list[StagedObject]]] | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="s3batch-stage") as stager:
            try:
                for partition, chunk in _chunks(self._prepared(items, handles, decided)):
                    if staging is not None:
                        self._raise_if_left(*staging.result())
                    staging = stager.submit(self._stage_chunk, partition, chunk, decided)
                if staging is not None:
                    self._raise_if_left(*staging.result())
            except StagingError as error:
                if staging is not None:
                    wait([staging])  # ``decided`` is complete once the stager is done
                error.accepted = self.channel.group([h for record_id, h in handles if record_id in decided])
                raise
        return self.channel.group([h for _, h in handles])

    def _raise_if_left(self, partition: Partition, left: list[StagedObject]) -> None:
        if left:
            raise full_error(self.lanes.staging(partition.lane(self.lane_index)), left[0])

    def close(self) -> None:
        """Release the Redis connections."""
        self.lanes.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prepared(
        self, items: Iterable[Item], handles: list[tuple[str, H]], decided: set[str]
    ) -> Iterator[tuple[Partition, StagedObject]]:
        for index, item in enumerate(items):
            record_id = _new_id()
            handles.append((record_id, self.channel.handle(record_id)))
            try:
                key, body, content_type, metadata, bucket, prefix = _unpack(index, item)
                partition = resolve(self.settings, bucket, prefix)
                yield partition, prepare_object(self.settings, record_id, key, body, content_type, metadata)
            except InputError as exc:
                self.channel.refuse(record_id, exc)
                decided.add(record_id)

    def _stage_chunk(
        self, partition: Partition, objects: Sequence[StagedObject], staged: set[str]
    ) -> tuple[Partition, list[StagedObject]]:
        return partition, self._stage(partition, objects, staged)

    def _stage(self, partition: Partition, objects: Sequence[StagedObject], staged: set[str]) -> list[StagedObject]:
        """Stage ``objects`` of ``partition`` in order (adding their ids to ``staged``), asking for flushes and
        waiting while staging is full; returns the objects still not staged after ``full_wait_s`` without room
        (a suffix)."""
        lane = partition.lane(self.lane_index)
        pending = list(objects)
        deadline = time.monotonic() + self.full_wait_s
        pause = 0.05
        while pending:
            outcome = stage_into(self.lanes, partition, lane, pending)
            refused_from = next((i for i, s in enumerate(outcome.statuses) if s == FULL), len(pending))
            staged.update(obj.record_id for obj in pending[:refused_from])
            done = list(zip(pending, outcome.statuses, strict=True))
            for obj in [o for o, status in done if status == CONFLICT]:  # a reused id: only a channel's own ids
                self.channel.refuse(obj.record_id, reused_error(obj))
            self.channel.staged([o for o, status in done if status == STAGED], lane, outcome.epoch)
            pending = pending[refused_from:]
            if outcome.flush_wanted or pending:  # full: a flush is what makes room
                self.channel.request_flush()
            if pending:
                if time.monotonic() >= deadline:
                    return pending
                time.sleep(pause)
                pause = min(1.0, pause * 2)
                if refused_from:
                    deadline = time.monotonic() + self.full_wait_s  # room was made: wait afresh
        return []


def _chunks(objects: Iterable[tuple[Partition, StagedObject]]) -> Iterator[tuple[Partition, list[StagedObject]]]:
    """Chunks of one partition each, a partition's objects in input order: a chunk goes out when it is full."""
    buffers: dict[Partition, list[StagedObject]] = {}
    sizes: dict[Partition, int] = {}
    for partition, obj in objects:
        buffers.setdefault(partition, []).append(obj)
        sizes[partition] = sizes.get(partition, 0) + obj.size
        if len(buffers[partition]) >= CHUNK_OBJECTS or sizes[partition] >= CHUNK_BYTES:
            sizes.pop(partition)
            yield partition, buffers.pop(partition)
    yield from buffers.items()


ITEM_FIELDS = ("key", "body", "content_type", "metadata", "bucket", "prefix")


def _unpack(index: int, item: Item) -> tuple[Any, Any, Any, Any, Any, Any]:
    """(key, body, content_type, metadata, bucket, prefix) of one put_objects item; raises InputError for another
    shape."""
    if isinstance(item, Mapping):
        unknown = set(item) - set(ITEM_FIELDS)
        if unknown or "key" not in item or "body" not in item:
            raise InputError(
                f"put_objects item {index} must have 'key' and 'body' and at most "
                f"{', '.join(repr(name) for name in ITEM_FIELDS[2:])}; it has {sorted(map(str, item))}"
            )
        key, body, content_type, metadata, bucket, prefix = (item.get(name) for name in ITEM_FIELDS)
        return key, body, content_type, metadata, bucket, prefix
    if isinstance(item, tuple) and 2 <= len(item) <= 4:
        key, body, content_type, metadata = (*item, None, None)[:4]
        return key, body, content_type, metadata, None, None
    raise InputError(
        f"put_objects item {index} is a {type(item).__name__}; give (key, body[, content_type[, metadata]]) "
        "or a mapping with those names (and bucket, prefix)"
    )


def _new_id() -> str:
    """A record id in the form of a Celery task id, so that the record's result is an ordinary task result."""
    return str(uuid.uuid4())
