"""What monitors (Flower, ``celery events``) and logs see of s3batch: the truth, and nothing about idle ticks.

A put_object's outcome is decided by a flush in a pool process, which cannot
see whether the worker sends task events: ``-E`` and Flower's remote
``enable_events`` change the consumer in the main process only. So the main
process copies that state, once a second, into a flag in memory shared with
its pool processes (``EventsState``); the flush reads it and announces each
object's final state under the real worker's name, with the time from send to
upload as its runtime. Objects that no worker announced when they were staged
(from ``Batcher``, or staged while events were off) get their received and
STAGED events then, with the times they really happened.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Sequence
from multiprocessing.sharedctypes import Synchronized
from typing import Any

from celery import Celery, bootsteps

from batcher.models import BatchRef, StagedObject
from workers import celery_internals as internals
from workers.context import TaskContext

log = logging.getLogger(__name__)

PUT_OBJECT = "s3batch.put_object"
QUIET_TASKS = frozenset({"s3batch.flush"})

_events_flag: Synchronized[int] | None = None


def events_on(app: Celery) -> bool:
    """Whether this worker sends task events now (the configured value outside a worker)."""
    if _events_flag is not None:
        return bool(_events_flag.value)
    return bool(app.conf.worker_send_task_events)


class EventsFlag(bootsteps.Step):
    """Creates the shared flag in the worker's main process, before the pool forks."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        global _events_flag
        _events_flag = multiprocessing.Value("b", 0, lock=False)
        super().__init__(parent, **kwargs)


class EventsState(bootsteps.StartStopStep):
    """Copies the consumer's task-events state into the shared flag once a second."""

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        self.timer: Any = None
        super().__init__(parent, **kwargs)

    def start(self, consumer: Any) -> None:
        def sync() -> None:
            if _events_flag is not None:
                _events_flag.value = int(internals.task_events_on(consumer))

        sync()
        self.timer = consumer.timer.call_repeatedly(1.0, sync)

    def stop(self, consumer: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()


def announce_uploaded(app: Celery, hostname: str | None, uploaded: Sequence[tuple[StagedObject, BatchRef]]) -> None:
    """task-succeeded for each object (and received/STAGED first where no worker announced them)."""
    now = time.time()
    events: list[tuple[str, dict[str, Any]]] = []
    for head, ref in uploaded:
        context = TaskContext.decode(head.context)
        events += _unannounced(head, context)
        start = context.sent or head.staged_ms / 1000
        fields = {"result": repr(ref.to_dict()), "runtime": max(0.0, now - start), "name": PUT_OBJECT}
        events.append(("task-succeeded", {"uuid": head.record_id, **fields}))
    _send(app, hostname, events)


def announce_failed(
    app: Celery, hostname: str | None, record_ids: Sequence[str], error: Exception, heads: dict[str, StagedObject]
) -> None:
    """task-failed for each object (and received/STAGED first where no worker announced them)."""
    events: list[tuple[str, dict[str, Any]]] = []
    for record_id in record_ids:
        head = heads.get(record_id)
        if head is not None:
            events += _unannounced(head, TaskContext.decode(head.context))
        events.append(("task-failed", {"uuid": record_id, "exception": repr(error), "name": PUT_OBJECT}))
    _send(app, hostname, events)


def _unannounced(head: StagedObject, context: TaskContext) -> list[tuple[str, dict[str, Any]]]:
    if context.announced:
        return []
    staged_at = head.staged_ms / 1000
    received = {"uuid": head.record_id, "name": PUT_OBJECT, "args": repr((head.object_key, f"<{head.size} bytes>"))}
    staged = {"uuid": head.record_id, "object_key": head.object_key, "size": head.size, "sha256": head.sha256}
    return [
        ("task-received", {**received, "timestamp": staged_at}),
        ("task-staged", {**staged, "timestamp": staged_at}),
    ]


def _send(app: Celery, hostname: str | None, events: list[tuple[str, dict[str, Any]]]) -> None:
    if not events:
        return
    try:
        with app.events.default_dispatcher(hostname=hostname) as dispatcher:
            for event_type, fields in events:
                dispatcher.send(event_type, **fields)
    except Exception:  # monitoring must never fail a flush whose results are already published
        log.warning("s3batch could not send %d task events to monitors", len(events), exc_info=True)


class QuietTicks(logging.Filter):
    """Drops the INFO lines of flush ticks (sent by beat, received, succeeded, discarded when expired) unless DEBUG
    is on: a tick that uploads something logs its own INFO line per batch, and failures stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or internals.logged_task_name(record) not in QUIET_TASKS:
            return True
        if not logging.getLogger("celery").isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def quiet_ticks() -> None:
    """Keep idle flush ticks out of this worker's log."""
    for name in internals.TASK_LOGGERS:
        logging.getLogger(name).addFilter(QuietTicks())
