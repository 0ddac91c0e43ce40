"""The Flask example: ``create_app()`` serves upload, task status and download of objects batched by s3batch.

s3batch itself is configured like everywhere else, from S3BATCH_*, CELERY_* and AWS_* variables; Flask's own
settings may come from FLASK_* variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from flask import Blueprint, Flask, Response, current_app, request, url_for
from flask.typing import ResponseReturnValue

from batcher import BatchReader, BatchRef, Settings
from batcher.errors import BatchNotFoundError, InputError, ReadError, StagingError, UploadError
from workers.tasks import STAGED, put_object

objects = Blueprint("objects", __name__)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The app, with one S3 client for its reads (configured the boto3 way: AWS_* variables, profiles)."""
    app = Flask(__name__)
    # Bodies are read into memory: allow the largest object s3batch accepts plus room for a form's other fields;
    # a request past that gets a 413 here rather than a task that would fail with ObjectTooLargeError.
    app.config["MAX_CONTENT_LENGTH"] = Settings.from_env().max_object_bytes + 64 * 1024
    app.config.from_prefixed_env()
    app.config.update(config or {})
    app.extensions["s3batch_reader"] = BatchReader()
    app.register_blueprint(objects)
    return app


@objects.post("/objects")
def upload() -> ResponseReturnValue:
    """Stage a multipart ``file`` or the raw body under ``key`` (query or form field); 202 with the task id."""
    if request.mimetype == "multipart/form-data":
        key = request.args.get("key") or request.form.get("key")
        file = request.files.get("file")
        if file is None:
            return {"error": "a multipart upload needs a 'file' field"}, 400
        data = file.read()
        content_type = file.content_type
    else:
        key = request.args.get("key")
        data = request.get_data()
        content_type = request.content_type
    if not key:
        return {"error": "give the object's key as the 'key' parameter"}, 400
    task = put_object.delay(key, data, content_type=content_type or None)
    status_url = url_for(".object_status", task_id=task.id)
    content_url = url_for(".object_content", task_id=task.id)
    body = {"task_id": task.id, "status_url": status_url, "content_url": content_url}
    return body, 202, {"Location": status_url}


@objects.get("/objects/<uuid:task_id>")
def object_status(task_id: UUID) -> ResponseReturnValue:
    """The task's state; with the ref once SUCCESS, with the error (and a 4xx/5xx) once FAILURE."""
    task = put_object.AsyncResult(str(task_id))
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
    return body


@objects.get("/objects/<uuid:task_id>/content")
def object_content(task_id: UUID) -> ResponseReturnValue:
    """The object's bytes with its content type, from its batch; 404 or 409 while there are none to serve."""
    task = put_object.AsyncResult(str(task_id))
    state = task.state
    outcome: Any = task.result  # STAGED: what was staged; SUCCESS: the ref dict; FAILURE: the error
    body: dict[str, Any] = {"task_id": task.id, "state": state}
    if state == "PENDING":  # Celery cannot tell an unknown task id from one no worker has taken yet
        return {**body, "error": "no such object (unknown task id, or not staged yet)"}, 404
    if state == "FAILURE":
        return {**body, "error": describe(outcome)}, 404
    if state != "SUCCESS":
        return {**body, "error": "the object is not in S3 yet"}, 409
    reader: BatchReader = current_app.extensions["s3batch_reader"]
    try:
        ref = BatchRef.from_dict(outcome)
        info = reader.head(ref)  # the content type lives in the member's header, not in the ref
        data = reader.get(ref)
    except BatchNotFoundError as exc:
        return {**body, "error": describe(exc)}, 404
    except ReadError as exc:
        return {**body, "error": describe(exc)}, 502
    response = Response(data, content_type=info.content_type or "application/octet-stream")
    # Uploaded content is served from our origin: never sniff it, never let it run scripts here.
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "sandbox"
    return response


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
