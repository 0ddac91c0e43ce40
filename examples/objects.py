"""What both example apps answer, without a web framework: a task's status and an object's content.

Each app only turns these answers into its framework's responses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batcher import BatchReader, BatchRef
from batcher.errors import BatchNotFoundError, InputError, ReadError, StagingError, UploadError
from workers.tasks import STAGED, put_object

# Uploaded content is served from the app's own origin: never sniff it, never let it run scripts there.
CONTENT_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}


@dataclass(frozen=True)
class Content:
    """An object's bytes and the content type to serve them with."""

    data: bytes
    content_type: str


def task_status(task_id: str) -> tuple[dict[str, Any], int]:
    """The task's state as JSON and an HTTP status: the ref once SUCCESS, the error (4xx/5xx) once FAILURE."""
    task = put_object.AsyncResult(task_id)
    state = task.state
    outcome: Any = task.result  # STAGED: what was staged; SUCCESS: the ref dict; FAILURE: the error
    body: dict[str, Any] = {"task_id": task.id, "state": state}
    if state == "SUCCESS":
        body["ref"] = outcome
    elif state == STAGED:
        body["staged"] = outcome  # object_key, size, sha256
    elif state == "FAILURE":
        body["error"] = describe(outcome)
        return body, failure_status(outcome)
    return body, 200


def object_content(reader: BatchReader, task_id: str) -> Content | tuple[dict[str, Any], int]:
    """The object's bytes and content type from its batch, or JSON and 404/409/502 while there are none to serve."""
    task = put_object.AsyncResult(task_id)
    state = task.state
    outcome: Any = task.result
    body: dict[str, Any] = {"task_id": task.id, "state": state}
    if state == "PENDING":  # Celery cannot tell an unknown task id from one no worker has taken yet
        return {**body, "error": "no such object (unknown task id, or not staged yet)"}, 404
    if state == "FAILURE":
        return {**body, "error": describe(outcome)}, 404
    if state != "SUCCESS":
        return {**body, "error": "the object is not in S3 yet"}, 409
    try:
        ref = BatchRef.from_dict(outcome)
        info = reader.head(ref)  # the content type lives in the member's header, not in the ref
        data = reader.get(ref)
    except BatchNotFoundError as exc:
        return {**body, "error": describe(exc)}, 404
    except ReadError as exc:
        return {**body, "error": describe(exc)}, 502
    return Content(data, info.content_type or "application/octet-stream")


def describe(error: BaseException) -> dict[str, str]:
    """The error as JSON: its class name (an S3BatchError subclass, usually) and its message."""
    return {"type": type(error).__name__, "message": str(error)}


def failure_status(error: BaseException) -> int:
    """422 for input s3batch refused, 503 while staging is unavailable, 502 when S3 would not take the batch."""
    if isinstance(error, InputError):
        return 422
    if isinstance(error, StagingError):
        return 503
    if isinstance(error, UploadError):
        return 502
    return 500
