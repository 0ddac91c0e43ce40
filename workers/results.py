"""Task states in Celery's result backend: written for put_object and the flush, read by producers' waits.

On the Redis backend every write is one Lua call per few hundred tasks that does
what the backend itself does per task (SET with the result's expiry, then
PUBLISH, so that every waiting ``AsyncResult.get()`` wakes at once); STAGED and
FAILURE never replace a final state. Other backends get the generic calls.

``PutObjectResult`` is the AsyncResult that put_object and ``Batcher`` hand
out: its waits raise ``NoWorkerError`` instead of hanging when no worker
serves the queues.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from celery import Celery, states
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult

from batcher.models import BatchRef, StagedObject
from workers import celery_internals as internals
from workers.context import TaskContext
from workers.liveness import check_served
from workers.monitoring import announce_failed, announce_uploaded, events_on

STAGED = "STAGED"
_CHUNK = 500  # results per round trip
_SLICE_S = 2.0  # how often a waiting get() looks whether a worker serves its queue


class ResultWriter:
    """Stores STAGED, SUCCESS and FAILURE states for put_object tasks (the flush's ResultSink)."""

    def __init__(self, app: Celery, hostname: str | None = None) -> None:
        self.app = app
        self.hostname = hostname
        """The worker name monitors see on the final events (the flushing worker's)."""
        self.backend: Any = cast(Any, app.backend)  # celery-types does not describe RedisBackend's client and keys
        redis_backend = internals.is_redis_backend(self.backend)
        self._store = self.backend.client.register_script(internals.STORE_SCRIPT) if redis_backend else None

    def mark_staged(self, task_id: str, info: dict[str, Any]) -> None:
        """Record that the object's bytes are in Redis staging."""
        self._write([(task_id, STAGED, info)], unless_final=True)

    def mark_staged_many(self, objects: Sequence[StagedObject]) -> None:
        """mark_staged for many objects, a few hundred per round trip."""
        self._write([(o.record_id, STAGED, staged_info(o)) for o in objects], unless_final=True)

    def publish(self, uploaded: Sequence[tuple[StagedObject, BatchRef]]) -> None:
        """Store SUCCESS with each ref's dict, tell monitors, then run the canvas of the objects that have one."""
        self._write([(head.record_id, states.SUCCESS, ref.to_dict()) for head, ref in uploaded], unless_final=False)
        if events_on(self.app):
            announce_uploaded(self.app, self.hostname, uploaded)
        for head, ref in uploaded:
            canvas = TaskContext.decode(head.context).canvas
            if canvas:
                internals.replay_success(self.app, head.record_id, ref.to_dict(), canvas)

    def fail(self, record_ids: Sequence[str], error: Exception, heads: Mapping[str, StagedObject]) -> None:
        """Store FAILURE with ``error`` (rebuilt as its class by the caller's ``get()``); run errbacks."""
        if events_on(self.app):
            announce_failed(self.app, self.hostname, record_ids, error, dict(heads))
        canvases = {
            rid: c for rid in record_ids if rid in heads and (c := TaskContext.decode(heads[rid].context).canvas)
        }
        encoded = self.backend.prepare_exception(error)
        self._write([(rid, states.FAILURE, encoded) for rid in record_ids if rid not in canvases], unless_final=True)
        for record_id, canvas in canvases.items():
            internals.replay_failure(self.app, record_id, error, canvas)

    def refuse(self, record_id: str, error: Exception) -> None:
        """Store FAILURE for an object that was never staged."""
        self.backend.mark_as_failure(record_id, error)

    def _write(self, items: Sequence[tuple[str, str, Any]], *, unless_final: bool) -> None:
        """Store (task id, state, result) items; with ``unless_final`` never over a SUCCESS or FAILURE."""
        if self._store is None:
            for task_id, state, result in items:
                if not (unless_final and self.backend.get_state(task_id) in states.READY_STATES):
                    self.backend.store_result(task_id, result, state)
            return
        ttl = internals.result_ttl_s(self.backend)
        date_done = datetime.now(UTC).isoformat()
        for start in range(0, len(items), _CHUNK):
            chunk = items[start : start + _CHUNK]
            keys = [internals.result_key(self.backend, task_id) for task_id, _, _ in chunk]
            values = [
                internals.result_meta(self.backend, task_id, state, result, date_done)
                for task_id, state, result in chunk
            ]
            self._store(keys=keys, args=[ttl, int(unless_final), *values])


def staged_info(obj: StagedObject) -> dict[str, Any]:
    """What a STAGED result holds: the object's key, size and SHA-256."""
    return {"object_key": obj.object_key, "size": obj.size, "sha256": obj.sha256}


class PutObjectResult(AsyncResult):  # type: ignore[type-arg]
    """The result of one put_object: ``get()`` raises NoWorkerError when no worker serves the queue it waits on.

    A PENDING result needs a worker on the ``s3batch`` queue, a STAGED one a worker on ``s3batch.flush``; a wait
    that has lasted S3BATCH_NO_WORKER_TIMEOUT while none has reported for that long gives up with the reason.
    """

    def get(  # type: ignore[override]  # Celery's keywords pass through **kwargs
        self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5, **kwargs: Any
    ) -> Any:
        # Waited in slices: Celery calls an ``on_interval`` callback only once (it is a promise), so the check
        # between slices is the way to look at the workers while waiting.
        started = time.monotonic()
        while True:
            waited = time.monotonic() - started
            remaining = None if timeout is None else timeout - waited
            slice_s = _SLICE_S if remaining is None else max(0.0, min(_SLICE_S, remaining))
            try:
                return super().get(timeout=slice_s, propagate=propagate, interval=interval, **kwargs)
            except CeleryTimeoutError:
                if remaining is not None and remaining <= _SLICE_S:
                    raise
            check_served(self.app, [self.state], time.monotonic() - started)
