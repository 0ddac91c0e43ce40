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
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from celery import Celery, states
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult

from batcher.errors import StagingLostError
from batcher.models import BatchRef, ClaimedBatch, StagedObject
from workers import celery_internals as internals
from workers.context import TaskContext
from workers.liveness import check_served
from workers.losses import REGISTRY_INDEX, registry_key, registry_member
from workers.monitoring import announce_failed, announce_uploaded, events_on
from workers.redelivery import resend_lost

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

    def mark_staged(self, task_id: str, info: dict[str, Any], lane: str, epoch: str) -> None:
        """Record that the object's bytes are in Redis staging (``lane``, during ``epoch``)."""
        self._write([(task_id, STAGED, info)], unless_final=True, registry=("add", lane, epoch))

    def mark_staged_many(self, objects: Sequence[StagedObject], lane: str, epoch: str) -> None:
        """mark_staged for many objects, a few hundred per round trip."""
        items = [(o.record_id, STAGED, staged_info(o, epoch)) for o in objects]
        self._write(items, unless_final=True, registry=("add", lane, epoch))

    def publish(self, batch: ClaimedBatch, uploaded: Sequence[tuple[StagedObject, BatchRef]]) -> None:
        """Store SUCCESS with each ref's dict, tell monitors, then run the canvas of the objects that have one."""
        items = [(head.record_id, states.SUCCESS, ref.to_dict()) for head, ref in uploaded]
        self._write(items, unless_final=False, registry=("remove", batch.lane, batch.epoch))
        if events_on(self.app):
            announce_uploaded(self.app, self.hostname, uploaded)
        for head, ref in uploaded:
            canvas = TaskContext.decode(head.context).canvas
            if canvas:
                internals.replay_success(self.app, head.record_id, ref.to_dict(), canvas)

    def fail(
        self, batch: ClaimedBatch, record_ids: Sequence[str], error: Exception, heads: Mapping[str, StagedObject]
    ) -> None:
        """Store FAILURE with ``error`` (rebuilt as its class by the caller's ``get()``); run errbacks."""
        if events_on(self.app):
            announce_failed(self.app, self.hostname, record_ids, error, dict(heads))
        canvases = {
            rid: c for rid in record_ids if rid in heads and (c := TaskContext.decode(heads[rid].context).canvas)
        }
        encoded = self.backend.prepare_exception(error)
        items = [(rid, states.FAILURE, encoded) for rid in record_ids if rid not in canvases]
        self._write(items, unless_final=True, registry=("remove", batch.lane, batch.epoch))
        for record_id, canvas in canvases.items():
            internals.replay_failure(self.app, record_id, error, canvas)

    def refuse(self, record_id: str, error: Exception, *, over_success: bool = False) -> None:
        """Store FAILURE for an object that was never staged; ``over_success`` replaces even a SUCCESS (a reused
        task id: its caller must hear the error, not another object's ref)."""
        if over_success:
            self._write([(record_id, states.FAILURE, self.backend.prepare_exception(error))], unless_final=False)
        else:
            self.backend.mark_as_failure(record_id, error)

    def _write(
        self,
        items: Sequence[tuple[str, str, Any]],
        *,
        unless_final: bool,
        registry: tuple[str, str, str] = ("", "", ""),
    ) -> None:
        """Store (task id, state, result) items; with ``unless_final`` never over a SUCCESS or FAILURE.

        ``registry`` is ("add" or "remove", lane, epoch): the items join or leave that epoch's registry of STAGED
        results (workers.losses), in the same call.
        """
        if self._store is None:
            for task_id, state, result in items:
                if not (unless_final and self.backend.get_state(task_id) in states.READY_STATES):
                    self.backend.store_result(task_id, result, state)
            return
        ttl = internals.result_ttl_s(self.backend)
        date_done = datetime.now(UTC).isoformat()
        operation, lane, epoch = registry if registry[2] else ("", "", "")
        registry_keys = [registry_key(lane, epoch), REGISTRY_INDEX] if operation else ["", ""]
        member = registry_member(lane, epoch) if operation else ""
        for start in range(0, len(items), _CHUNK):
            chunk = items[start : start + _CHUNK]
            keys = [internals.result_key(self.backend, task_id) for task_id, _, _ in chunk]
            values = [
                internals.result_meta(self.backend, task_id, state, result, date_done)
                for task_id, state, result in chunk
            ]
            args = [ttl, int(unless_final), operation, member, int(time.time() * 1000), *values]
            self._store(keys=[*registry_keys, *keys], args=args)


def staged_info(obj: StagedObject, epoch: str) -> dict[str, Any]:
    """What a STAGED result holds: the object's key, size and SHA-256, and the staging epoch it is in."""
    return {"object_key": obj.object_key, "size": obj.size, "sha256": obj.sha256, "epoch": epoch}


class PutObjectResult(AsyncResult):  # type: ignore[type-arg]
    """The result of one put_object: its waits never hang on a deployment that cannot deliver it.

    ``get()`` raises NoWorkerError when no worker serves the queue it waits on (a PENDING result needs one on
    ``s3batch``, a STAGED one on ``s3batch.flush``) for S3BATCH_NO_WORKER_TIMEOUT; StagingLostError when the
    result went from STAGED back to PENDING (the staged data and the result were lost with a Redis that
    restarted empty); and sends the message again, with the same task id, when the Redis broker lost it
    (workers.redelivery). A result made in another process (``app.AsyncResult(id)``) cannot resend.
    """

    sent_at: float | None = None
    """When the producer sent the message (seconds since the epoch), or None."""
    resends: int = 0
    staged_epoch: str | None = None
    """The staging epoch its STAGED state named, once seen; None before."""
    _resend: Callable[[], float] | None = None

    def resend(self) -> None:
        """Send the same message again (same task id, arguments and options)."""
        if self._resend is None:
            return
        self.sent_at = self._resend()
        self.resends += 1

    def get(  # type: ignore[override]  # Celery's keywords pass through **kwargs
        self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5, **kwargs: Any
    ) -> Any:
        # Waited in slices: Celery calls an ``on_interval`` callback only once (it is a promise), so the looks at
        # the workers and the staged data happen between slices.
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
            self.look(time.monotonic() - started)

    @property
    def state(self) -> str:  # type: ignore[override]  # celery-types knows only Celery's own states
        """The task's state; a STAGED one is remembered, so that a later PENDING tells the result was lost."""
        meta = internals.task_meta(self)
        self.saw(meta)
        return str(meta["status"])

    def saw(self, meta: Mapping[str, Any]) -> None:
        """Remember a STAGED state (and its epoch) read from the result backend."""
        if meta.get("status") == STAGED:
            info = meta.get("result")
            self.staged_epoch = str(info.get("epoch") or "") if isinstance(info, dict) else ""

    def look(self, waited_s: float) -> None:
        """Between waits: raise what waiting longer cannot fix, resend what the broker lost."""
        state = self.state
        if state == states.PENDING and self.staged_epoch is not None:
            raise staging_lost(self.id, self.staged_epoch)
        elif state == states.PENDING:
            resend_lost(self.app, [self])
        check_served(self.app, [state], waited_s)


def staging_lost(task_id: str, epoch: str) -> StagingLostError:
    """The error of a result that was STAGED and is now PENDING: its result and staged data are gone."""
    return StagingLostError(
        f"task {task_id} was STAGED (staging epoch {epoch.split(' ', 1)[0] or 'unknown'}) and its result is gone: "
        "the Redis that held the staged object and its result restarted without appendonly persistence or was "
        "flushed before the batch was uploaded. Send the object again"
    )
