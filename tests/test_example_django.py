"""The Django example in-process against real Redis, moto's S3 server and a real worker: upload, poll, download."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import django
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.test.utils import setup_test_environment, teardown_test_environment

from tests.support import Stack

SETTINGS_MODULE = "examples.django_app.settings"

pytestmark = pytest.mark.services  # the app talks to the tests' redis-server and moto


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
        django.setup()  # reads the example's settings; the views import workers.tasks when the URLconf loads
    setup_test_environment()  # lets the test client's "testserver" host in
    try:
        yield Client()
    finally:
        teardown_test_environment()


def poll(client: Client, status_url: str, timeout_s: float = 30) -> Any:
    """The status response once the task is SUCCESS or FAILURE (or the last one at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(status_url)
        if response.json()["state"] in ("SUCCESS", "FAILURE") or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def test_upload_poll_download_round_trip(stack: Stack, client: Client) -> None:
    stack.start_worker(S3BATCH_MAX_BATCH_AGE=1)
    raw_key, raw_body = "users/42/аватар.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    form_key, form_body = "notes/today.txt", "déjà vu\n".encode() * 100

    raw = client.post(f"/objects?key={quote(raw_key)}", data=raw_body, content_type="image/png")
    form = client.post(
        "/objects",
        {"key": form_key, "file": SimpleUploadedFile("today.txt", form_body, content_type="text/plain; charset=utf-8")},
    )

    for response, key, body, content_type in (
        (raw, raw_key, raw_body, "image/png"),
        (form, form_key, form_body, "text/plain; charset=utf-8"),
    ):
        assert response.status_code == 202, response.content
        task_id = response.json()["task_id"]
        assert response["Location"] == response.json()["status_url"] == f"/objects/{task_id}"
        status = poll(client, response["Location"])
        assert status.status_code == 200, status.content
        assert status.json()["state"] == "SUCCESS", status.json()
        ref = status.json()["ref"]
        assert ref["object_key"] == key and ref["size"] == len(body) and ref["bucket"] == stack.settings.bucket
        content = client.get(response.json()["content_url"])
        assert content.status_code == 200, content.content
        assert content.content == body
        assert content["Content-Type"] == content_type
        assert content["X-Content-Type-Options"] == "nosniff"


def test_bad_key_reports_failure_with_the_invalid_key_error(stack: Stack, client: Client) -> None:
    stack.start_worker(S3BATCH_MAX_BATCH_AGE=1)
    response = client.post(f"/objects?key={'k' * 1025}", data=b"data", content_type="application/octet-stream")
    assert response.status_code == 202, response.content

    status = poll(client, response["Location"])
    assert status.status_code == 422
    assert status.json()["state"] == "FAILURE"
    error = status.json()["error"]
    assert error["type"] == "InvalidKeyError"
    assert "is 1025 UTF-8 bytes; S3 allows at most 1024" in error["message"]
    content = client.get(response.json()["content_url"])
    assert content.status_code == 404 and content.json()["error"] == error


def test_requests_that_cannot_be_served_yet_or_at_all(client: Client) -> None:
    from django.conf import settings

    from workers.app import app
    from workers.results import ResultWriter

    assert settings.SETTINGS_MODULE == SETTINGS_MODULE
    assert client.post("/objects", data=b"no key", content_type="text/plain").status_code == 400
    assert client.post("/objects", {"key": "no-file"}).status_code == 400
    assert client.get("/objects/not-a-task-id").status_code == 404
    assert client.get("/objects").status_code == 405

    unknown = str(uuid.uuid4())
    assert client.get(f"/objects/{unknown}").json() == {"task_id": unknown, "state": "PENDING"}
    assert client.get(f"/objects/{unknown}/content").status_code == 404

    staged = str(uuid.uuid4())
    ResultWriter(app).mark_staged(staged, {"object_key": "k", "size": 1, "sha256": "0" * 64})
    try:
        assert client.get(f"/objects/{staged}").json()["staged"]["object_key"] == "k"
        response = client.get(f"/objects/{staged}/content")
        assert response.status_code == 409 and response.json()["state"] == "STAGED"
    finally:
        app.backend.forget(staged)
