"""The s3batch tasks: ``s3batch.put_object`` stages one object, ``s3batch.flush`` uploads due batches.

``register(app)`` puts them on an s3batch app; importing this module registers them on ``workers.app:app``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

from celery import Celery, Task
from celery.signals import task_rejected
from kombu.exceptions import ContentDisallowed

from batcher.config import Settings
from batcher.errors import ContentRefusedError, InputError, StagingError, TaskIdReusedError
from batcher.partitions import producer_lane, resolve
from batcher.producer import prepare_object, stage_object
from workers import celery_internals as internals
from workers.app import app as default_app
from workers.context import staged_context
from workers.losses import fail_lost
from workers.monitoring import events_on
from workers.results import STAGED, PutObjectResult, staged_info
from workers.runtime import runtime

if TYPE_CHECKING:
    BaseTask = Task[Any, Any]
else:
    BaseTask = Task  # subscriptable only from Celery 5.7 (celery_internals 10)

log = logging.getLogger(__name__)

PUT_OBJECT = "s3batch.put_object"
FLUSH = "s3batch.flush"


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
    default_app.backend.mark_as_failure(task_id, error)


class PutObjectTask(BaseTask):
    """Keeps message metadata small (bodies never appear in argsrepr/kwargsrepr) and stamps the send time."""

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:  # type: ignore[override]
        """Send the object to a worker; raises ConfigError first when s3batch's settings are wrong, and
        TaskIdReusedError when a task id given here already names another object."""
        runtime(self.app).settings  # noqa: B018  (a bad setting is said here, not as a broker error)
        args = list(args or ())
        kwargs = dict(kwargs or {})
        if options.get("task_id"):
            _refuse_reused_id(self.app, str(options["task_id"]), args, kwargs)
        if len(args) >= 2:
            args[1] = _plain_bytes(args[1])
        if "body" in kwargs:
            kwargs["body"] = _plain_bytes(kwargs["body"])
        shown = [repr(a) if i != 1 else _describe_body(a) for i, a in enumerate(args)]
        options.setdefault("argsrepr", f"({', '.join(shown)})")
        options.setdefault(
            "kwargsrepr", repr({k: (_describe_body(v) if k == "body" else v) for k, v in kwargs.items()})
        )
        sent_at = time.time()
        headers = {internals.SENT_HEADER: sent_at, internals.LANE_HEADER: producer_lane(runtime(self.app).settings)}
        options["headers"] = {**(options.get("headers") or {}), **headers}
        result = super().apply_async(args, kwargs, **options)
        if isinstance(result, PutObjectResult):
            result.sent_at = sent_at
            task_id = result.id

            # The closure names the task id, never the result: a result that refers to itself through its
            # _resend would be freed only by the cycle collector, whose AsyncResult.__del__ on Celery before
            # 5.7 stops the wait of whichever object waits on that id (celery_internals: 12. result lifetime).
            def resend() -> float:
                again = {**options, "task_id": task_id, "headers": {**options["headers"]}}
                again["headers"][internals.SENT_HEADER] = now = time.time()
                super(PutObjectTask, self).apply_async(args, kwargs, **again)
                return now

            result._resend = resend
        return result

    def AsyncResult(self, task_id: str, **kwargs: Any) -> PutObjectResult:
        """A result whose waits raise instead of hanging when no worker serves the queues or staging was lost."""
        return PutObjectResult(task_id, app=self.app, **kwargs)


def lane_of(request: Any, settings: Settings) -> int:
    """The lane index the producer chose (its own, so that its objects keep their order), else this process's."""
    chosen = internals.header(request, internals.LANE_HEADER)
    if isinstance(chosen, int) and 0 <= chosen < settings.lanes:
        return chosen
    return producer_lane(settings)


def _refuse_reused_id(app: Celery, task_id: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    """TaskIdReusedError when ``task_id`` already has a result for another object (sending the same object again
    is fine: staging is idempotent per id). Only for ids the caller chose, so it costs one read only then."""
    meta = app.backend.get_task_meta(task_id, cache=False)
    known = meta.get("result") if meta.get("status") in (STAGED, "SUCCESS") else None
    if not isinstance(known, dict):
        return
    key = args[0] if args else kwargs.get("key")
    body = args[1] if len(args) > 1 else kwargs.get("body")
    if not isinstance(body, bytes | bytearray | memoryview):
        return  # bad input: the worker's validation says what is wrong
    sha256 = hashlib.sha256(body).hexdigest()
    if (known.get("object_key"), known.get("sha256")) != (key, sha256):
        raise TaskIdReusedError(
            f"task id {task_id} already names object {known.get('object_key')!r} ({meta['status']}); "
            f"refusing to send {key!r} under it: give every object its own task id"
        )


def _plain_bytes(body: Any) -> Any:
    """bytearray and memoryview become bytes, which the JSON serializer can carry."""
    return bytes(body) if isinstance(body, bytearray | memoryview) else body


def _describe_body(body: Any) -> str:
    return f"<{len(body)} bytes>" if isinstance(body, bytes) else f"<{type(body).__name__}>"


def stage_one(
    self: BaseTask,
    key: str,
    body: bytes,
    content_type: str | None = None,
    metadata: dict[str, str] | None = None,
    bucket: str | None = None,
    prefix: str | None = None,
) -> Any:  # the worker sees "staged"; callers' results get the ref dict from the flush
    """Validate and stage one object (in the partition ``bucket``/``prefix``, the defaults when None); the flush
    stores SUCCESS with its BatchRef dict later.

    Fails with an InputError subclass for bad input (InvalidBucketError for a bucket S3BATCH_BUCKETS does not
    allow); retries with backoff while staging is full or Redis is unavailable.
    """
    rt = runtime(self.app)
    request = self.request
    task_id = str(request.id)
    watched = events_on(rt.app)
    context = staged_context(request, watched)
    partition = resolve(rt.settings, bucket, prefix)
    obj = prepare_object(rt.settings, task_id, key, body, content_type, metadata, context=context)
    lane = partition.lane(lane_of(request, rt.settings))
    try:
        outcome = stage_object(rt.lanes, partition, lane, obj)
    except TaskIdReusedError as exc:
        log.error("s3batch: %s", exc)
        rt.results.refuse(task_id, exc, over_success=True)  # Celery itself never replaces a SUCCESS
        raise
    staged = staged_info(obj, outcome.epoch)
    rt.results.mark_staged(task_id, staged, lane, outcome.epoch)
    if watched:
        self.send_event("task-staged", **staged)  # monitors show the task as STAGED
    if outcome.flush_wanted:
        rt.app.tasks[FLUSH].apply_async(expires=60)
    if request.is_eager:
        # Run in-process (apply(), task_always_eager): its EagerResult must not say SUCCESS "staged".
        from celery.exceptions import Ignore

        raise Ignore()
    internals.leave_outcome_to_flush(request)
    return "staged"


def flush_due(self: BaseTask, force: bool = False) -> None:
    """Finish abandoned batches, then upload every due batch (all staged ones when ``force``)."""
    rt = runtime(self.app)
    rt.results.hostname = self.request.hostname or rt.results.hostname
    try:
        flushed = rt.flusher.flush(force=force)
        fail_lost(rt.app, rt.lanes)
    except StagingError as exc:  # Redis is down or failing over: every tick would say so; say it every 10 s
        now = time.monotonic()
        if now - _last_staging_warning[0] >= 10:
            _last_staging_warning[0] = now
            log.warning("s3batch flush: the staging Redis cannot be used (next tick tries again): %s", exc)
        return
    if flushed:
        log.debug("s3batch flush finished %d batches", len(flushed))


_last_staging_warning = [-1e9]


def register(app: Celery) -> tuple[PutObjectTask, BaseTask]:
    """Register put_object and flush on ``app``; returns them."""
    put = app.task(
        bind=True,
        base=PutObjectTask,
        name=PUT_OBJECT,
        throws=(InputError,),
        Request=internals.StagingRequest,
        autoretry_for=(StagingError,),
        retry_backoff=1,
        retry_backoff_max=20,
        retry_jitter=True,
        max_retries=10,
    )(stage_one)
    # A tick is not news: no events (Flower's task list stays the objects'), and its log lines are DEBUG.
    tick = app.task(bind=True, name=FLUSH, ignore_result=True, send_events=False)(flush_due)
    return put, tick


put_object, flush = register(default_app)

__all__ = ["STAGED", "flush", "put_object", "register"]
