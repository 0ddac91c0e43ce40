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

from batcher import BatchReader, Settings
from examples.objects import CONTENT_HEADERS, Content, task_status
from examples.objects import object_content as content_of
from workers.tasks import put_object

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
    return task_status(str(task_id))


@objects.get("/objects/<uuid:task_id>/content")
def object_content(task_id: UUID) -> ResponseReturnValue:
    """The object's bytes with its content type, from its batch; 404 or 409 while there are none to serve."""
    answer = content_of(current_app.extensions["s3batch_reader"], str(task_id))
    if not isinstance(answer, Content):
        return answer
    return Response(answer.data, content_type=answer.content_type, headers=CONTENT_HEADERS)
