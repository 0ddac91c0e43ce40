"""The Flask example: ``create_app()`` serves upload, task status and download of objects batched by s3batch.

The answers come from examples/objects.py; these views only read Flask's request and build its responses, and
the error handlers turn Flask's own errors (404, 405, 413, 500) into the same JSON. s3batch itself is configured
like everywhere else, from S3BATCH_*, CELERY_* and AWS_* variables; Flask's own settings may come from FLASK_*
variables (FLASK_S3BATCH_MAX_OBJECT_BYTES included).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from flask import Blueprint, Flask, Response, current_app, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from batcher import BatchReader, Settings
from examples import objects
from examples.objects import Content, Reply

log = logging.getLogger(__name__)
FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")
blueprint = Blueprint("objects", __name__)


def create_app(config: Mapping[str, Any] | None = None, *, reader: BatchReader | None = None) -> Flask:
    """The app, with one S3 client for its reads (configured the boto3 way: AWS_* variables, profiles)."""
    app = Flask(__name__)
    app.config["S3BATCH_MAX_OBJECT_BYTES"] = Settings.from_env().max_object_bytes  # read once
    app.config.from_prefixed_env()
    app.config.update(config or {})
    # Werkzeug refuses (413) to read a body past this: the largest object plus room for a form's other fields.
    app.config.setdefault("MAX_CONTENT_LENGTH", None)
    if app.config["MAX_CONTENT_LENGTH"] is None:
        app.config["MAX_CONTENT_LENGTH"] = app.config["S3BATCH_MAX_OBJECT_BYTES"] + objects.FORM_OVERHEAD_BYTES
    app.extensions["s3batch_reader"] = reader or BatchReader()
    app.register_blueprint(blueprint)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, server_error)
    return app


def json_response(reply: Reply) -> ResponseReturnValue:
    return reply.body, reply.status, dict(reply.headers)


@blueprint.post("/objects")
def upload() -> ResponseReturnValue:
    """Stage a multipart ``file`` or the raw body under ``key`` (query or form field); 202 with the task id."""
    limit: int = current_app.config["S3BATCH_MAX_OBJECT_BYTES"]
    early = objects.declared_too_large(request.content_length, limit)
    if early is not None:
        return json_response(early)
    if request.mimetype in FORMS:
        key = request.args.get("key") or request.form.get("key")
        file = request.files.get("file")
        if file is None:
            return json_response(objects.error(400, "a form upload needs multipart/form-data with a 'file' field"))
        data = file.read(limit + 1)  # enough to know it is too large, never more
        content_type = file.content_type
    else:
        key = request.args.get("key")
        data = request.get_data()
        content_type = request.content_type

    def urls(task_id: str) -> tuple[str, str]:
        return url_for(".object_status", task_id=task_id), url_for(".object_content", task_id=task_id)

    return json_response(objects.upload(key, data, content_type, limit=limit, urls=urls))


@blueprint.get("/objects/<uuid:task_id>")
def object_status(task_id: UUID) -> ResponseReturnValue:
    """The task's state; the ref once SUCCESS; a JSON error with 4xx/5xx for FAILURE, unknown or expired ids."""
    return json_response(objects.task_status(str(task_id)))


@blueprint.get("/objects/<uuid:task_id>/content")
def object_content(task_id: UUID) -> ResponseReturnValue:
    """The object's bytes with its content type and download name; a HEAD (Flask adds it) reads only its header."""
    reader: BatchReader = current_app.extensions["s3batch_reader"]
    answer = objects.object_content(reader, str(task_id), with_data=request.method != "HEAD")
    if not isinstance(answer, Content):
        return json_response(answer)
    response = Response(answer.data, content_type=answer.content_type)
    response.headers.update(answer.headers)  # after the body: Content-Length is the object's size, HEAD included
    return response


def http_error(exc: HTTPException) -> ResponseReturnValue:
    """Flask's own errors as JSON, keeping their headers (Allow on a 405)."""
    status = exc.code or 500
    if status == 413:
        reply = objects.too_large(request.content_length or 0, current_app.config["S3BATCH_MAX_OBJECT_BYTES"])
    elif status == 404:
        reply = objects.error(404, f"no such resource: {request.path} (see the example's README)")
    elif status == 405:
        reply = objects.error(405, f"{request.method} is not allowed here")
    else:
        reply = objects.error(status, exc.description or exc.name)
    kept = {k: v for k, v in exc.get_response().headers.items() if k.lower() not in ("content-type", "content-length")}
    return reply.body, reply.status, {**kept, **reply.headers}


def server_error(exc: Exception) -> ResponseReturnValue:
    """Anything unexpected: logged with its traceback, answered with a JSON 500 that shows none."""
    log.exception("s3batch example: %s %s failed", request.method, request.path)
    return json_response(objects.error(500, "internal error: the server log has the details"))
