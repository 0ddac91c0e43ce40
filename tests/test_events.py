"""What Flower and ``celery events`` see: every put_object received -> STAGED -> SUCCESS under the real worker's
name, however task events were turned on, and nothing of idle flush ticks."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.support import Stack
from workers import Batcher
from workers.app import app


class EventLog:
    """Every event on the broker while it runs, and Celery's own State (what Flower keeps) fed with them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.state = app.events.State()
        self._lock = threading.Lock()

    def record(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)
            self.state.event(event)

    def of(self, task_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("uuid") == task_id]

    def wait_for(self, task_id: str, final: str, timeout_s: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while not any(e["type"] == final for e in self.of(task_id)):
            assert time.monotonic() < deadline, [e["type"] for e in self.of(task_id)]
            time.sleep(0.05)
        return self.of(task_id)


@contextmanager
def listening() -> Iterator[EventLog]:
    log = EventLog()
    ready, stop = threading.Event(), threading.Event()

    def listen() -> None:
        with app.connection_for_read() as connection:
            receiver = app.events.Receiver(connection, handlers={"*": log.record})
            while not stop.is_set():
                try:
                    for _ in receiver.itercapture(limit=None, timeout=0.5, wakeup=False):
                        ready.set()
                        if stop.is_set():
                            return
                except (TimeoutError, OSError):
                    ready.set()

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield log
    finally:
        stop.set()
        thread.join(5)


def start_watched_worker(stack: Stack, how: str) -> str:
    """A worker whose task events are on the way ``how`` says; its node name."""
    if how == "-E":
        worker = stack.start_worker(extra_args=["-E"])
    elif how == "config module":
        worker = stack.start_worker(S3BATCH_CELERY_CONFIG="tests.celery_events_config")
    else:  # as Flower does when it starts: the enable_events control command
        worker = stack.start_worker()
        replies = app.control.enable_events(destination=[worker.node], reply=True, timeout=5)
        assert replies, "the worker did not answer enable_events"
        time.sleep(1.5)  # the pool processes see it within a second
    return worker.node


@pytest.mark.parametrize("how", ["-E", "remote enable_events", "config module"])
def test_monitors_see_received_staged_succeeded_from_the_real_worker(stack: Stack, how: str) -> None:
    from workers.tasks import put_object

    with listening() as log:
        node = start_watched_worker(stack, how)
        sent = put_object.delay("watched/delay", b"by flower")
        with Batcher(stack.settings) as batcher:
            direct = batcher.put_object("watched/direct", b"staged directly")
        sent.get(timeout=30)
        direct.get(timeout=30)
        for result, expected in ((sent, ["task-received", "task-started", "task-staged", "task-succeeded"]),
                                 (direct, ["task-received", "task-staged", "task-succeeded"])):  # fmt: skip
            events = log.wait_for(result.id, "task-succeeded")
            assert [e["type"] for e in events] == expected, how
            assert {e["hostname"] for e in events} == {node}, "no phantom gen<pid>@host worker"
            succeeded = events[-1]
            assert succeeded["name"] == "s3batch.put_object" and succeeded["runtime"] > 0
            assert "'object_key'" in succeeded["result"]
            task = log.state.tasks[result.id]  # what Flower shows
            assert (task.state, task.name, task.worker.hostname) == ("SUCCESS", "s3batch.put_object", node)
        assert not [e for e in log.events if e.get("name") == "s3batch.flush"], "flush ticks are not news"
        assert set(log.state.workers) == {node}


def test_idle_ticks_log_nothing_and_expired_ticks_are_dropped_quietly(stack: Stack) -> None:
    from workers.tasks import flush

    for _ in range(3):
        flush.apply_async(expires=0.2)  # stale ticks, as after a restart
    time.sleep(0.5)
    worker = stack.start_worker(S3BATCH_MAX_BATCH_AGE=1)
    time.sleep(3)  # about 15 idle ticks
    lines = [line for line in worker.log().splitlines() if "s3batch.flush" in line or "s3batch-flush" in line]
    assert lines == []
    assert "Discarding revoked" not in worker.log()
