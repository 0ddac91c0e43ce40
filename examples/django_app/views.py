"""Upload an object through s3batch, follow its task, and read it back from its batch."""

from __future__ import annotations

from functools import cache
from typing import Any
from uuid import UUID

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from batcher import BatchReader, BatchRef
from batcher.errors import BatchNotFoundError, InputError, ReadError, StagingError, UploadError
from workers.tasks import STAGED, put_object


@cache
def reader() -> BatchReader:
    """One S3 client per process, configured the boto3 way (AWS_* variables, profiles)."""
    return BatchReader()


@csrf_exempt  # an API for programs: no session, no cookies, nothing for a forged form to ride on
@require_POST
def upload(request: HttpRequest) -> JsonResponse:
    """Stage a multipart ``file`` or the raw body under ``key`` (query or form field); 202 with the task id."""
    if request.content_type == "multipart/form-data":
        key = request.GET.get("key") or request.POST.get("key")
        file = request.FILES.get("file")
        if file is None:
            return JsonResponse({"error": "a multipart upload needs a 'file' field"}, status=400)
        data = file.read()
        content_type = file.content_type or ""
        # Django keeps the part's charset apart from its content type, as bytes.
        charset = file.charset.decode() if isinstance(file.charset, bytes) else file.charset
        if content_type and charset:
            content_type += f"; charset={charset}"
    else:
        key = request.GET.get("key")
        data = request.body
        content_type = request.headers.get("Content-Type", "")
    if not key:
        return JsonResponse({"error": "give the object's key as the 'key' parameter"}, status=400)
    task = put_object.delay(key, data, content_type=content_type or None)
    status_url = reverse("object-status", args=[task.id])
    content_url = reverse("object-content", args=[task.id])
    response = JsonResponse({"task_id": task.id, "status_url": status_url, "content_url": content_url}, status=202)
    response["Location"] = status_url
    return response


@require_GET
def object_status(request: HttpRequest, task_id: UUID) -> JsonResponse:
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
        return JsonResponse(body, status=failure_status(outcome))
    return JsonResponse(body)


@require_GET
def object_content(request: HttpRequest, task_id: UUID) -> HttpResponse:
    """The object's bytes with its content type, from its batch; 404 or 409 while there are none to serve."""
    task = put_object.AsyncResult(str(task_id))
    state = task.state
    outcome: Any = task.result  # STAGED: what was staged; SUCCESS: the ref dict; FAILURE: the error
    body: dict[str, Any] = {"task_id": task.id, "state": state}
    if state == "PENDING":  # Celery cannot tell an unknown task id from one no worker has taken yet
        return JsonResponse({**body, "error": "no such object (unknown task id, or not staged yet)"}, status=404)
    if state == "FAILURE":
        return JsonResponse({**body, "error": describe(outcome)}, status=404)
    if state != "SUCCESS":
        return JsonResponse({**body, "error": "the object is not in S3 yet"}, status=409)
    try:
        ref = BatchRef.from_dict(outcome)
        info = reader().head(ref)  # the content type lives in the member's header, not in the ref
        data = reader().get(ref)
    except BatchNotFoundError as exc:
        return JsonResponse({**body, "error": describe(exc)}, status=404)
    except ReadError as exc:
        return JsonResponse({**body, "error": describe(exc)}, status=502)
    response = HttpResponse(data, content_type=info.content_type or "application/octet-stream")
    # Uploaded content is served from our origin: never sniff it, never let it run scripts here.
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "sandbox"
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
