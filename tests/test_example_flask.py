"""The Flask example in-process against real Redis, moto's S3 server and a real worker: upload, poll, download."""

from __future__ import annotations

import io
import time
import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from examples.flask_app.app import create_app
from tests.support import Stack

pytestmark = pytest.mark.services  # the app talks to the tests' redis-server and moto


@pytest.fixture(scope="module")
def client() -> FlaskClient:
    return create_app({"TESTING": True}).test_client()


def json_of(response: TestResponse) -> Any:
    assert response.is_json, response.data
    return response.get_json()


def poll(client: FlaskClient, status_url: str, timeout_s: float = 30) -> TestResponse:
    """The status response once the task is SUCCESS or FAILURE (or the last one at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(status_url)
        if json_of(response)["state"] in ("SUCCESS", "FAILURE") or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def test_upload_poll_download_round_trip(stack: Stack, client: FlaskClient) -> None:
    stack.start_worker(S3BATCH_MAX_BATCH_AGE=1)
    raw_key, raw_body = "users/42/аватар.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    form_key, form_body = "notes/today.txt", "déjà vu\n".encode() * 100

    raw = client.post("/objects", query_string={"key": raw_key}, data=raw_body, content_type="image/png")
    form = client.post(
        "/objects",
        data={"key": form_key, "file": (io.BytesIO(form_body), "today.txt", "text/plain; charset=utf-8")},
    )

    for response, key, body, content_type in (
        (raw, raw_key, raw_body, "image/png"),
        (form, form_key, form_body, "text/plain; charset=utf-8"),
    ):
        assert response.status_code == 202, response.data
        task_id = json_of(response)["task_id"]
        assert response.headers["Location"] == json_of(response)["status_url"] == f"/objects/{task_id}"
        status = poll(client, response.headers["Location"])
        assert status.status_code == 200, status.data
        assert json_of(status)["state"] == "SUCCESS", status.data
        ref = json_of(status)["ref"]
        assert ref["object_key"] == key and ref["size"] == len(body) and ref["bucket"] == stack.settings.bucket
        content = client.get(json_of(response)["content_url"])
        assert content.status_code == 200, content.data
        assert content.data == body
        assert content.headers["Content-Type"] == content_type
        assert content.headers["X-Content-Type-Options"] == "nosniff"


def test_bad_key_reports_failure_with_the_invalid_key_error(stack: Stack, client: FlaskClient) -> None:
    stack.start_worker(S3BATCH_MAX_BATCH_AGE=1)
    response = client.post(
        "/objects", query_string={"key": "k" * 1025}, data=b"data", content_type="application/octet-stream"
    )
    assert response.status_code == 202, response.data

    status = poll(client, response.headers["Location"])
    assert status.status_code == 422
    assert json_of(status)["state"] == "FAILURE"
    error = json_of(status)["error"]
    assert error["type"] == "InvalidKeyError"
    assert "is 1025 UTF-8 bytes; S3 allows at most 1024" in error["message"]
    content = client.get(json_of(response)["content_url"])
    assert content.status_code == 404 and json_of(content)["error"] == error


def test_requests_that_cannot_be_served_yet_or_at_all(client: FlaskClient) -> None:
    from workers.app import app
    from workers.results import ResultWriter

    assert client.post("/objects", data=b"no key", content_type="text/plain").status_code == 400
    assert client.post("/objects", data={"key": "no-file"}, content_type="multipart/form-data").status_code == 400
    assert client.get("/objects/not-a-task-id").status_code == 404
    assert client.get("/objects").status_code == 405

    unknown = str(uuid.uuid4())
    assert json_of(client.get(f"/objects/{unknown}")) == {"task_id": unknown, "state": "PENDING"}
    assert client.get(f"/objects/{unknown}/content").status_code == 404

    staged = str(uuid.uuid4())
    ResultWriter(app).mark_staged(staged, {"object_key": "k", "size": 1, "sha256": "0" * 64})
    try:
        assert json_of(client.get(f"/objects/{staged}"))["staged"]["object_key"] == "k"
        response = client.get(f"/objects/{staged}/content")
        assert response.status_code == 409 and json_of(response)["state"] == "STAGED"
    finally:
        app.backend.forget(staged)
