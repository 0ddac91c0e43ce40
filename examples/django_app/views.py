"""Upload an object through s3batch, follow its task, and read it back from its batch, in Django.

The answers come from examples/objects.py; these views only read Django's request and build its responses,
and turn Django's own errors (404, 405, 400, 500) into the same JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache, wraps
from uuid import UUID

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from batcher import BatchReader
from examples import objects
from examples.objects import Content, Reply

log = logging.getLogger(__name__)
View = Callable[..., HttpResponse]
FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")


@cache
def reader() -> BatchReader:
    """One S3 client per process, configured the boto3 way (AWS_* variables, profiles)."""
    return BatchReader()


def json_response(reply: Reply) -> JsonResponse:
    return JsonResponse(reply.body, status=reply.status, headers=dict(reply.headers))


def allow(*methods: str) -> Callable[[View], View]:
    """Answer other methods with a JSON 405 naming the allowed ones (Django's own 405 has an empty body)."""

    def decorate(view: View) -> View:
        @wraps(view)
        def checked(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
            if request.method not in methods:
                reply = objects.error(405, f"{request.method} is not allowed here; use {' or '.join(methods)}")
                response = json_response(reply)
                response["Allow"] = ", ".join(methods)
                return response
            return view(request, *args, **kwargs)

        return checked

    return decorate


@csrf_exempt  # an API for programs: no session, no cookies, nothing for a forged form to ride on
@allow("POST")
def upload(request: HttpRequest) -> HttpResponse:
    """Stage a multipart ``file`` or the raw body under ``key`` (query or form field); 202 with the task id."""
    limit: int = settings.S3BATCH_MAX_OBJECT_BYTES
    declared = request.META.get("CONTENT_LENGTH")
    early = objects.declared_too_large(int(declared) if declared and declared.isdigit() else None, limit)
    if early is not None:
        return json_response(early)
    try:
        if request.content_type in FORMS:
            key = request.GET.get("key") or request.POST.get("key")
            file = request.FILES.get("file")
            if file is None:
                return json_response(objects.error(400, "a form upload needs multipart/form-data with a 'file' field"))
            if file.size is not None and file.size > limit:
                return json_response(objects.too_large(file.size, limit))  # not read: Django spooled it to disk
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
    except MultiPartParserError as exc:
        return json_response(objects.error(400, f"the multipart body is malformed: {exc}"))
    except RequestDataTooBig:
        return json_response(objects.too_large(int(declared or 0) or limit + 1, limit))

    def urls(task_id: str) -> tuple[str, str]:
        return reverse("object-status", args=[task_id]), reverse("object-content", args=[task_id])

    return json_response(objects.upload(key, data, content_type, limit=limit, urls=urls))


@allow("GET", "HEAD")
def object_status(request: HttpRequest, task_id: UUID) -> HttpResponse:
    """The task's state; the ref once SUCCESS; a JSON error with 4xx/5xx for FAILURE, unknown or expired ids."""
    return json_response(objects.task_status(str(task_id)))


@allow("GET", "HEAD")
def object_content(request: HttpRequest, task_id: UUID) -> HttpResponse:
    """The object's bytes with its content type and download name; a HEAD reads only its header from S3."""
    answer = objects.object_content(reader(), str(task_id), with_data=request.method != "HEAD")
    if not isinstance(answer, Content):
        return json_response(answer)
    response = HttpResponse(answer.data, content_type=answer.content_type)
    for name, value in answer.headers.items():
        response[name] = value
    return response


# Django's error views, in JSON (named by handler400/404/500 in urls.py; Django uses them when DEBUG is off).


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    return json_response(objects.error(400, f"bad request: {exception}"))


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    return json_response(objects.error(404, f"no such resource: {request.path} (see the example's README)"))


def server_error(request: HttpRequest) -> HttpResponse:
    return json_response(objects.error(500, "internal error: the server log has the details"))
