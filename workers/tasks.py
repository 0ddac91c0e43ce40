"""The s3batch tasks: ``s3batch.put_object`` stages one object, ``s3batch.flush`` uploads due batches."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from celery import Task
from celery.exceptions import Ignore
from celery.signals import task_rejected, worker_process_init
from celery.worker.request import Request
from kombu.exceptions import ContentDisallowed

from batcher.config import Settings
from batcher.errors import ContentRefusedError, InputError, StagingError
from batcher.flush import Flusher
from batcher.producer import prepare_object, stage_object
from batcher.staging import Staging, connect
from batcher.uploader import Uploader
from workers import canvas
from workers.app import app, settings
from workers.results import STAGED, ResultWriter

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Per-process clients, created on first use (after the worker forks)."""

    settings: Settings

    @cached_property
    def staging(self) -> Staging:
        return Staging(connect(self.settings.redis_url))

    @cached_property
    def results(self) -> ResultWriter:
        return ResultWriter(app)

    @cached_property
    def flusher(self) -> Flusher:
        checkpoint = crash_point_from_env()
        uploader = Uploader(checkpoint=checkpoint)
        return Flusher(self.settings, self.staging, uploader, self.results, checkpoint=checkpoint)


def crash_point_from_env() -> Callable[[str], None]:
    """Fault injection for the recovery tests, never set in production.

    ``S3BATCH_CRASH_AT=point[:n[:action]]``: the n-th time (default 1st) a flush reaches ``point``
    (see Flusher.checkpoint), ``kill`` (default) SIGKILLs this worker's whole process group,
    ``stop`` SIGSTOPs it (a stalled flush), ``sleep`` pauses this flush for 3 s (a slow one).
    """
    spec = os.environ.get("S3BATCH_CRASH_AT", "")
    if not spec:
        return lambda point: None
    target, nth, action = ([*spec.split(":"), "", ""])[:3]
    remaining = [int(nth or 1)]

    def crash(point: str) -> None:
        if point != target:
            return
        remaining[0] -= 1
        if remaining[0] != 0:
            return
        log.error("s3batch S3BATCH_CRASH_AT=%s reached", spec)
        if action == "sleep":
            time.sleep(3)
        else:
            os.killpg(os.getpgid(0), signal.SIGSTOP if action == "stop" else signal.SIGKILL)

    return crash


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime(settings)
    return _runtime


@worker_process_init.connect
def _fresh_clients_after_fork(**_: Any) -> None:
    global _runtime
    _runtime = None


@task_rejected.connect
def _fail_refused_messages(message: Any = None, exc: Exception | None = None, **_: Any) -> None:
    """Celery drops a non-JSON message with a log line; give its caller a FAILURE that says why."""
    headers = getattr(message, "headers", None) or {}
    task_id, task_name = headers.get("id"), str(headers.get("task", ""))
    if not isinstance(exc, ContentDisallowed) or not task_id or not task_name.startswith("s3batch."):
        return
    error = ContentRefusedError(
        f"task {task_name} {task_id} was sent as {message.content_type!r}; s3batch workers accept only "
        "JSON messages (send with serializer='json', the default of the s3batch app)"
    )
    app.backend.mark_as_failure(task_id, error)


class PutObjectTask(Task[Any, Any]):
    """Keeps message metadata small: bodies never appear in argsrepr/kwargsrepr."""

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:  # type: ignore[override]
        args = list(args or ())
        kwargs = dict(kwargs or {})
        if len(args) >= 2:
            args[1] = _plain_bytes(args[1])
        if "body" in kwargs:
            kwargs["body"] = _plain_bytes(kwargs["body"])
        shown = [repr(a) if i != 1 else _describe_body(a) for i, a in enumerate(args)]
        options.setdefault("argsrepr", f"({', '.join(shown)})")
        options.setdefault(
            "kwargsrepr", repr({k: (_describe_body(v) if k == "body" else v) for k, v in kwargs.items()})
        )
        return super().apply_async(args, kwargs, **options)


class PutObjectRequest(Request):
    """The worker's side of a put_object: its return only means "staged", so it announces no task-succeeded
    event (the flush sends that one, with the ref, once the batch is in S3)."""

    def send_event(self, type: str, **fields: Any) -> None:
        if type != "task-succeeded":
            super().send_event(type, **fields)


def _leave_outcome_to_flush(request: Any) -> None:
    """Celery must neither store this task's return nor fire its canvas: the flush does both, with the ref.

    (Ending the task in ``Ignore`` would do the same, but Celery formats a traceback for every ignored task:
    measured at two thirds of a put_object's time in the worker.)
    """
    request.ignore_result = True  # read again by the backend when the tracer stores the return
    request.callbacks = request.chain = request.chord = None


def _plain_bytes(body: Any) -> Any:
    """bytearray and memoryview become bytes, which the JSON serializer can carry."""
    return bytes(body) if isinstance(body, bytearray | memoryview) else body


def _describe_body(body: Any) -> str:
    return f"<{len(body)} bytes>" if isinstance(body, bytes) else f"<{type(body).__name__}>"


@app.task(
    bind=True,
    base=PutObjectTask,
    name="s3batch.put_object",
    throws=(InputError,),
    Request=PutObjectRequest,
    autoretry_for=(StagingError,),
    retry_backoff=1,
    retry_backoff_max=20,
    retry_jitter=True,
    max_retries=10,
)
def put_object(
    self: Task[Any, Any],
    key: str,
    body: bytes,
    content_type: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Any:  # the worker sees "staged"; callers' results get the ref dict from the flush
    """Validate and stage one object; the flush stores SUCCESS with its BatchRef dict later.

    Fails with an InputError subclass for bad input; retries with backoff while staging is
    full or Redis is unavailable.
    """
    rt = runtime()
    task_id = str(self.request.id)
    obj = prepare_object(rt.settings, task_id, key, body, content_type, metadata, context=canvas.capture(self.request))
    flush_wanted = stage_object(rt.settings, rt.staging, obj)
    staged: dict[str, Any] = {"object_key": obj.object_key, "size": obj.size, "sha256": obj.sha256}
    rt.results.mark_staged(task_id, staged)
    if app.conf.worker_send_task_events:
        self.send_event("task-staged", **staged)  # Flower shows the task as STAGED
    if flush_wanted:
        flush.apply_async(expires=60)
    if self.request.is_eager:
        raise Ignore()  # run in-process (apply(), task_always_eager): its EagerResult must not say SUCCESS "staged"
    _leave_outcome_to_flush(self.request)
    return "staged"


@app.task(name="s3batch.flush", ignore_result=True)
def flush(force: bool = False) -> None:
    """Finish abandoned batches, then upload every due batch (all staged ones when ``force``)."""
    flushed = runtime().flusher.flush(force=force)
    if flushed:
        log.debug("s3batch flush finished %d batches", len(flushed))


__all__ = ["STAGED", "flush", "put_object"]
