"""No silent waits: workers report the queues they serve, and producers' waits give up when none does.

Each worker's main process reports its name and queues into the staging Redis
every couple of seconds (``Heartbeat``, a consumer bootstep; batcher.consumers).
A wait on PENDING results needs a worker on the put_object queue, a wait on
STAGED ones a worker on the flush queue: after S3BATCH_NO_WORKER_TIMEOUT
without one, ``check_served`` raises NoWorkerError naming the queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from celery import Celery, bootsteps

from batcher.consumers import REPORT_INTERVAL_S, Consumers
from batcher.errors import NoWorkerError, S3BatchError
from workers.app import FLUSH_QUEUE, QUEUE, S3BatchApp

log = logging.getLogger(__name__)


class Heartbeat(bootsteps.StartStopStep):
    """Reports this worker's queues from a thread, so that a slow Redis never blocks the consumer."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        super().__init__(parent, **kwargs)

    def start(self, consumer: Any) -> None:
        app = consumer.app
        if not isinstance(app, S3BatchApp):
            return
        consumers = Consumers(_staging_client(app))
        name = consumer.hostname

        def run() -> None:
            while True:
                queues = sorted(app.amqp.queues.consume_from or app.amqp.queues)
                try:
                    consumers.report(name, queues, int(time.time() * 1000))
                except S3BatchError as exc:
                    log.warning("s3batch heartbeat: %s", exc)
                if self.stopping.wait(REPORT_INTERVAL_S):
                    break
            try:
                consumers.forget(name)
            except S3BatchError as exc:
                log.warning("s3batch heartbeat: %s", exc)

        self.stopping.clear()
        self.thread = threading.Thread(target=run, name="s3batch-heartbeat", daemon=True)
        self.thread.start()

    def stop(self, consumer: Any) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(5)
            self.thread = None


def check_served(app: Celery, states: Iterable[str], waited_s: float) -> None:
    """Raise NoWorkerError when results in ``states`` have waited longer than the no-worker timeout for a queue
    that no worker reported serving in that time."""
    if not isinstance(app, S3BatchApp):
        return
    timeout_s = app.s3batch_settings.no_worker_timeout_s
    if waited_s < timeout_s:
        return
    states = set(states)
    needed = [queue for queue, state in ((QUEUE, "PENDING"), (FLUSH_QUEUE, "STAGED")) if state in states]
    if not needed:
        return
    consumers = Consumers(_staging_client(app))
    now_ms = int(time.time() * 1000)
    for queue in needed:
        if not consumers.serving(queue, now_ms, int(timeout_s * 1000)):
            raise NoWorkerError(
                f"no s3batch worker has served the {queue!r} queue for {timeout_s:g} s "
                "(S3BATCH_NO_WORKER_TIMEOUT) while results wait on it: start one with "
                "`celery -A workers.app worker -B` (or check that yours consume that queue)"
            )


def _staging_client(app: S3BatchApp) -> Any:
    from workers.runtime import runtime

    return runtime(app).lanes.client
