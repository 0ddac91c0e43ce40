"""What both example apps answer, without a web framework: an upload, a task's status, an object's content.

Each app only reads its framework's request and turns these answers into its framework's responses. Every
answer but the object's bytes is JSON; when something is wrong it has an ``error`` message and the status says
what: 400 not an upload this app understands, 404 no such task, object or route, 405 wrong method, 409 not in
S3 yet, 410 the task's result has expired or its message was lost (upload again), 413 over
S3BATCH_MAX_OBJECT_BYTES, 422 s3batch refused the object, 502 S3 failed, 503 Redis (broker, results or staging)
is unavailable. examples/taskids.py says what the app
can and cannot know about a task id.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError

from batcher import BatchReader, BatchRef
from batcher.errors import BatchNotFoundError, InputError, ReadError, StagingError, UploadError
from examples.taskids import CLOCK_SKEW, issued_at, lifetime_s, new_task_id
from workers.redelivery import lost_messages
from workers.tasks import STAGED, put_object

log = logging.getLogger(__name__)

# Uploaded content is served from the app's own origin: never sniff it, never let it run scripts there.
CONTENT_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
# Room for a multipart form's boundaries and other fields on top of the object itself.
FORM_OVERHEAD_BYTES = 64 * 1024
RETRY_AFTER_S = 5
_FILENAME_SAFE = "!#$&+-.^_`|~"  # RFC 5987 attr-char, besides letters and digits


@dataclass(frozen=True)
class Reply:
    """A JSON answer: its body, HTTP status and extra headers."""

    body: dict[str, Any]
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Content:
    """An object to serve: its bytes (empty for a HEAD), size, content type and download name."""

    data: bytes
    size: int
    content_type: str
    filename: str

    @property
    def headers(self) -> dict[str, str]:
        """Content-Length (the object's size, for GET and HEAD alike), Content-Disposition and the safety headers."""
        return {
            **CONTENT_HEADERS,
            "Content-Disposition": content_disposition(self.filename),
            "Content-Length": str(self.size),
        }


def error(status: int, message: str, **fields: Any) -> Reply:
    """A JSON error: ``{"error": message, **fields}`` with ``status``."""
    return Reply({"error": message, **fields}, status)


def too_large(size: int, limit: int) -> Reply:
    """413 for an object (or a request body) of ``size`` bytes over the ``limit``."""
    return error(
        413,
        f"the object is {size} bytes; S3BATCH_MAX_OBJECT_BYTES allows at most {limit}: "
        "send a smaller one (or store big objects in S3 directly: batching does not pay for them)",
    )


def declared_too_large(content_length: int | None, limit: int) -> Reply | None:
    """413 before reading a body whose declared length cannot hold an object within ``limit``; None otherwise."""
    if content_length is not None and content_length > limit + FORM_OVERHEAD_BYTES:
        return too_large(content_length, limit)
    return None


def upload(
    key: str | None, data: bytes, content_type: str | None, *, limit: int, urls: Callable[[str], tuple[str, str]]
) -> Reply:
    """Send the object to s3batch under a new task id: 202 with the id and ``urls(task_id)`` (status, content).

    400 without a key, 413 over ``limit`` bytes (the worker would refuse it too), 503 when Redis is down.
    """
    if not key:
        return error(400, "give the object's key as the 'key' parameter (query string or form field)")
    if len(data) > limit:
        return too_large(len(data), limit)
    task_id = new_task_id()
    try:
        put_object.apply_async((key, data), {"content_type": content_type or None}, task_id=task_id)
    except Exception as exc:
        if not redis_unavailable(exc):
            raise
        return unavailable(exc)
    status_url, content_url = urls(task_id)
    body = {"task_id": task_id, "status_url": status_url, "content_url": content_url}
    return Reply(body, 202, {"Location": status_url})


def task_status(task_id: str) -> Reply:
    """The task's state: 200 PENDING/STAGED/SUCCESS (with ``staged`` or ``ref``), FAILURE with 422/502/503/500,
    404 UNKNOWN, 410 EXPIRED (see examples/taskids.py), 503 when Redis is down."""
    found = _lookup(task_id)
    if isinstance(found, Reply):
        return found
    state, outcome = found
    body: dict[str, Any] = {"task_id": task_id, "state": state}
    if state == "SUCCESS":
        return Reply({**body, "ref": outcome})
    if state == STAGED:
        return Reply({**body, "staged": outcome})  # object_key, size, sha256
    if state == "FAILURE":
        return error(failure_status(outcome), str(outcome), error_type=type(outcome).__name__, **body)
    return Reply(body)  # PENDING (issued here, not staged yet), RETRY (staging was refused, it tries again)


def object_content(reader: BatchReader, task_id: str, *, with_data: bool = True) -> Content | Reply:
    """The object from its batch (its bytes only ``with_data``: a HEAD needs the header, not the data), or why not:
    409 not in S3 yet, 404 unknown or FAILURE or its batch gone, 410 EXPIRED, 502 S3 failed, 503 Redis down."""
    found = _lookup(task_id)
    if isinstance(found, Reply):
        return found
    state, outcome = found
    body: dict[str, Any] = {"task_id": task_id, "state": state}
    if state == "FAILURE":
        return error(404, str(outcome), error_type=type(outcome).__name__, **body)
    if state != "SUCCESS":
        return error(409, "the object is not in S3 yet: poll its status until SUCCESS", **body)
    try:
        ref = BatchRef.from_dict(outcome)
        info = reader.head(ref)  # the content type lives in the member's header, not in the ref
        data = reader.get(ref) if with_data else b""
    except BatchNotFoundError as exc:
        return error(404, f"the batch holding the object is gone from S3: {exc}", error_type=type(exc).__name__, **body)
    except ReadError as exc:
        return error(502, f"S3 could not give the object back: {exc}", error_type=type(exc).__name__, **body)
    content_type = info.content_type or "application/octet-stream"
    return Content(data, ref.size, content_type, download_name(ref.object_key))


def failure_status(error: BaseException) -> int:
    """422 for input s3batch refused, 503 while staging is unavailable, 502 when S3 would not take the batch."""
    if isinstance(error, InputError):
        return 422
    if isinstance(error, StagingError):
        return 503
    if isinstance(error, UploadError):
        return 502
    return 500


def redis_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis (broker or result backend) cannot be reached or is full.

    Celery's Redis result consumer gives up reconnecting with a plain RuntimeError (it has no class of its
    own), after about 20 s, when a process has never reached Redis: its message is the only way to know it.
    """
    if isinstance(exc, OperationalError | RedisConnectionError | RedisTimeoutError | OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "Celery result store" in str(exc)


def unavailable(exc: BaseException) -> Reply:
    """503 with Retry-After for a Redis that is down or full."""
    log.warning("s3batch example: Redis is unavailable: %s", exc)
    if isinstance(exc, RuntimeError):  # Celery's own words ("must be restarted") would mislead a client
        reason = "Celery gave up reconnecting to the result store"
    else:
        reason = " ".join(str(exc).split())
    reply = error(503, f"Redis (the task queue and results) is unavailable, try again later: {reason}")
    return Reply(reply.body, reply.status, {"Retry-After": str(RETRY_AFTER_S)})


def download_name(object_key: str) -> str:
    """The key's last non-empty segment ("object" if none), control characters replaced by "_"."""
    segment = next((part for part in reversed(object_key.split("/")) if part not in ("", ".", "..")), "object")
    return "".join("_" if unicodedata.category(char) == "Cc" else char for char in segment)


def content_disposition(filename: str) -> str:
    """``attachment`` with the name (RFC 6266): an ASCII fallback, and RFC 5987 UTF-8 when it is not ASCII."""
    decomposed = unicodedata.normalize("NFKD", filename)
    fallback = "".join(
        "_" if not char.isascii() or char in '"\\' else char for char in decomposed if not unicodedata.combining(char)
    )
    value = f'attachment; filename="{fallback}"'
    if fallback != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe=_FILENAME_SAFE)}"
    return value


def _lookup(task_id: str) -> tuple[str, Any] | Reply:
    """(state, result) from the result backend, or the reply for PENDING ids that are unknown or expired, or 503."""
    task = put_object.AsyncResult(task_id)
    try:
        # One read for state and result (rebuilt as its class); no cache, so that an expired result is seen as gone.
        meta = task.backend.get_task_meta(task_id, cache=False)
    except Exception as exc:
        if not redis_unavailable(exc):
            raise
        return unavailable(exc)
    state, outcome = str(meta["status"]), meta.get("result")
    if state != "PENDING":
        return state, outcome
    issued = issued_at(task_id)
    now = datetime.now(UTC)
    body = {"task_id": task_id}
    if issued is None or issued > now + CLOCK_SKEW:
        return error(404, f"no task {task_id}: this app did not issue it", state="UNKNOWN", **body)
    lifetime = lifetime_s(put_object.app.conf.result_expires)
    age = (now - issued).total_seconds()
    if lifetime is not None and age > lifetime:
        return error(
            410,
            f"task {task_id} was issued {age:.0f} s ago and results are kept {lifetime:.0f} s: its result has "
            "expired (or the task never ran)",
            state="EXPIRED",
            issued_at=issued.isoformat(),
            **body,
        )
    if lost_messages(put_object.app, [issued.timestamp()])[0]:
        return error(
            410,
            f"task {task_id} was issued {age:.0f} s ago and the broker no longer holds its message (a worker was "
            "killed as it took it): upload the object again",
            state="LOST",
            issued_at=issued.isoformat(),
            **body,
        )
    return "PENDING", None
