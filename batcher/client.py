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
from batcher.models import StagedObject
from batcher.preflight import check_redis, refuse_cluster
from batcher.producer import full_error, prepare_object, reused_error
from batcher.staging import CONFLICT, FULL, STAGED, Staging

H = TypeVar("H")
G = TypeVar("G")
G_co = TypeVar("G_co", covariant=True)

CHUNK_OBJECTS = 500  # objects per staging round trip: one Lua call, a few ms of Redis time
CHUNK_BYTES = 4 * 1024 * 1024
FULL_WAIT_S = 30.0  # how long a producer waits for room while staging is full before giving up

Item = tuple[Any, ...] | Mapping[str, Any]
"""``(key, body)``, ``(key, body, content_type)``, ``(key, body, content_type, metadata)`` or a mapping with
those names."""


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
    """Stages objects from this process; ``put_objects`` keeps the order of its items.

    Use one Batcher per process (it holds a Redis connection pool); it is safe to share between threads.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        channel: ResultChannel[H, G] | None = None,
        full_wait_s: float = FULL_WAIT_S,
    ) -> None:
        """Raises ConfigError at once when the staging Redis cannot be used (unreachable, refused credentials)."""
        if channel is None:
            raise ConfigError(
                "batcher.Batcher needs the result channel its callers wait on: use workers.Batcher for Celery "
                "results, or pass channel="
            )
        self.settings = settings or Settings.from_env()
        self.staging = Staging.for_settings(self.settings)
        info = check_redis(self.staging.client, self.settings.redis_url, "S3BATCH_REDIS_URL")
        refuse_cluster(
            info, self.settings.redis_url, "S3BATCH_REDIS_URL", "s3batch staging needs a single Redis for now"
        )
        self.channel: ResultChannel[H, G] = channel
        self.full_wait_s = full_wait_s

    def put_object(
        self, key: str, body: bytes, content_type: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> H:
        """Stage one object and return its handle (STAGED now, SUCCESS with the BatchRef dict once uploaded).

        Raises an InputError subclass for bad input, StagingFullError when staging has no room for
        ``full_wait_s`` in a row, StagingError when Redis (staging or the result backend) fails.
        """
        obj = prepare_object(self.settings, _new_id(), key, body, content_type, metadata)
        if self._stage([obj], set()):
            raise full_error(self.staging, obj)
        return self.channel.handle(obj.record_id)

    def put_objects(self, items: Iterable[Item]) -> G:
        """Stage many objects in order, a few hundred per round trip, and return their handles as one group.

        An item with bad input gets a FAILURE result saying why and stages nothing; the others go on.
        Raises StagingFullError when staging has no room for ``full_wait_s`` in a row, StagingError when Redis
        (staging or the result backend) fails; either way its ``accepted`` holds the results of the items before
        the first one not staged, in input order (staged ones will be uploaded; refused ones have FAILURE).
        """
        handles: list[tuple[str, H]] = []
        decided: set[str] = set()  # staged, or refused for bad input
        # One chunk is staged by a thread while the next is validated and hashed here: the Redis round trip and
        # its scripts' run overlap with the Python work (one stager keeps the chunks in order).
        staging: Future[list[StagedObject]] | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="s3batch-stage") as stager:
            try:
                for chunk in _chunks(self._prepared(items, handles, decided)):
                    if staging is not None:
                        self._raise_if_left(staging.result())
                    staging = stager.submit(self._stage, chunk, decided)
                if staging is not None:
                    self._raise_if_left(staging.result())
            except StagingError as error:
                if staging is not None:
                    wait([staging])  # ``decided`` is complete once the stager is done
                undecided = next((i for i, (record_id, _) in enumerate(handles) if record_id not in decided), None)
                error.accepted = self.channel.group([h for _, h in handles[:undecided]])
                raise
        return self.channel.group([h for _, h in handles])

    def _raise_if_left(self, left: list[StagedObject]) -> None:
        if left:
            raise full_error(self.staging, left[0])

    def close(self) -> None:
        """Release the Redis connections."""
        self.staging.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prepared(
        self, items: Iterable[Item], handles: list[tuple[str, H]], decided: set[str]
    ) -> Iterator[StagedObject]:
        for index, item in enumerate(items):
            record_id = _new_id()
            handles.append((record_id, self.channel.handle(record_id)))
            try:
                key, body, content_type, metadata = _unpack(index, item)
                yield prepare_object(self.settings, record_id, key, body, content_type, metadata)
            except InputError as exc:
                self.channel.refuse(record_id, exc)
                decided.add(record_id)

    def _stage(self, objects: Sequence[StagedObject], staged: set[str]) -> list[StagedObject]:
        """Stage ``objects`` in order (adding their ids to ``staged``), asking for flushes and waiting while
        staging is full; returns the objects still not staged after ``full_wait_s`` without room (a suffix)."""
        pending = list(objects)
        deadline = time.monotonic() + self.full_wait_s
        pause = 0.05
        while pending:
            outcome = self.staging.stage(pending)
            refused_from = next((i for i, s in enumerate(outcome.statuses) if s == FULL), len(pending))
            staged.update(obj.record_id for obj in pending[:refused_from])
            done = list(zip(pending, outcome.statuses, strict=True))
            for obj in [o for o, status in done if status == CONFLICT]:  # a reused id: only a channel's own ids
                self.channel.refuse(obj.record_id, reused_error(obj))
            self.channel.staged([o for o, status in done if status == STAGED], self.staging.keys.lane, outcome.epoch)
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


def _chunks(objects: Iterable[StagedObject]) -> Iterator[list[StagedObject]]:
    chunk: list[StagedObject] = []
    size = 0
    for obj in objects:
        chunk.append(obj)
        size += obj.size
        if len(chunk) >= CHUNK_OBJECTS or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _unpack(index: int, item: Item) -> tuple[Any, Any, Any, Any]:
    """(key, body, content_type, metadata) of one put_objects item; raises InputError for another shape."""
    if isinstance(item, Mapping):
        unknown = set(item) - {"key", "body", "content_type", "metadata"}
        if unknown or "key" not in item or "body" not in item:
            raise InputError(
                f"put_objects item {index} must have 'key' and 'body' and at most 'content_type' and 'metadata'; "
                f"it has {sorted(map(str, item))}"
            )
        return item["key"], item["body"], item.get("content_type"), item.get("metadata")
    if isinstance(item, tuple) and 2 <= len(item) <= 4:
        key, body, content_type, metadata = (*item, None, None)[:4]
        return key, body, content_type, metadata
    raise InputError(
        f"put_objects item {index} is a {type(item).__name__}; give (key, body[, content_type[, metadata]]) "
        "or a mapping with those names"
    )


def _new_id() -> str:
    """A record id in the form of a Celery task id, so that the record's result is an ordinary task result."""
    return str(uuid.uuid4())
