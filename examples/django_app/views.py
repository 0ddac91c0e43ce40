"""Upload an object through s3batch, follow its task, and read it back from its batch."""

from __future__ import annotations

from functools import cache
from uuid import UUID

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from batcher import BatchReader
from examples.objects import CONTENT_HEADERS, Content, task_status
from examples.objects import object_content as content_of
from workers.tasks import put_object


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
    body, status = task_status(str(task_id))
    return JsonResponse(body, status=status)


@require_GET
def object_content(request: HttpRequest, task_id: UUID) -> HttpResponse:
    """The object's bytes with its content type, from its batch; 404 or 409 while there are none to serve."""
    answer = content_of(reader(), str(task_id))
    if not isinstance(answer, Content):
        body, status = answer
        return JsonResponse(body, status=status)
    return HttpResponse(answer.data, content_type=answer.content_type, headers=CONTENT_HEADERS)
