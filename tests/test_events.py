"""With task events on, monitors such as Flower see put_object go STAGED, then SUCCESS."""

from __future__ import annotations

import threading
import time
from typing import Any

from tests.support import Stack


def test_flower_sees_staged_then_succeeded(stack: Stack) -> None:
    from workers.app import app
    from workers.tasks import put_object

    seen: list[tuple[str, str]] = []
    ready = threading.Event()
    stop = threading.Event()

    def listen() -> None:
        with app.connection_for_read() as connection:
            receiver = app.events.Receiver(
                connection, handlers={"*": lambda e: seen.append((e["type"], e.get("uuid", "")))}
            )
            events = receiver.itercapture(limit=None, timeout=0.5, wakeup=False)
            ready.set()
            while not stop.is_set():
                try:
                    next(events)
                except (TimeoutError, OSError):
                    events = receiver.itercapture(limit=None, timeout=0.5, wakeup=False)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    ready.wait(10)
    stack.start_worker(S3BATCH_CELERY_CONFIG="tests.celery_events_config", S3BATCH_MAX_BATCH_AGE=1)
    result = put_object.delay("watched", b"by flower")
    result.get(timeout=20)
    deadline = time.monotonic() + 10
    wanted = [("task-staged", result.id), ("task-succeeded", result.id)]
    while not all(event in seen for event in wanted):
        assert time.monotonic() < deadline, [e for e in seen if e[1] == result.id]
        time.sleep(0.1)
    mine: list[Any] = [e[0] for e in seen if e[1] == result.id]
    assert mine.index("task-staged") < mine.index("task-succeeded")
    assert mine.count("task-succeeded") == 1  # the worker announces no success of its own at staging time
    stop.set()
    listener.join(5)
