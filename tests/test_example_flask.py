"""The Flask example in-process against real Redis, moto's S3 server and a real worker: upload, poll, download,
and every error as JSON with its status."""

from __future__ import annotations

import io
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from batcher.embedded import RedisServer, S3Server
from examples import objects
from examples.flask_app.app import create_app
from examples.taskids import new_task_id
from tests.example_http import (
    STOP_REDIS,
    assert_json_error,
    filename_of,
    old_task_id,
    run_outage,
    unreachable_s3_reader,
)
from tests.support import Stack


@pytest.fixture(scope="module")
def client(redis_server: RedisServer, s3_server: S3Server) -> FlaskClient:
    return create_app({"TESTING": True}).test_client()


def json_of(response: TestResponse) -> Any:
    assert response.is_json, response.data
    return response.get_json()


def expect_error(response: TestResponse, status: int) -> Any:
    body = json_of(response)
    assert_json_error(response.status_code, response.headers.get("Content-Type"), body, status)
    return body


def poll(client: FlaskClient, status_url: str, timeout_s: float = 30) -> TestResponse:
    """The status response once the task is SUCCESS or FAILURE (or the last one at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(status_url)
        if json_of(response)["state"] in ("SUCCESS", "FAILURE") or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def test_upload_poll_download_head_and_what_follows(
    stack: Stack, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack.start_worker(S3BATCH_MAX_BATCH_AGE=1)
    raw_key, raw_body = "users/42/аватар.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    form_key, form_body = "notes/today.txt", "déjà vu\n".encode() * 100
    empty_key = "docs/empty/"

    raw = client.post("/objects", query_string={"key": raw_key}, data=raw_body, content_type="image/png")
    form = client.post(
        "/objects",
        data={"key": form_key, "file": (io.BytesIO(form_body), "today.txt", "text/plain; charset=utf-8")},
    )
    empty = client.post("/objects", query_string={"key": empty_key}, data=b"", content_type="application/octet-stream")

    for response, key, body, content_type, filename in (
        (raw, raw_key, raw_body, "image/png", "аватар.png"),
        (form, form_key, form_body, "text/plain; charset=utf-8", "today.txt"),
        (empty, empty_key, b"", "application/octet-stream", "empty"),
    ):
        assert response.status_code == 202, response.data
        task_id = json_of(response)["task_id"]
        assert uuid.UUID(task_id).version == 7, task_id
        assert response.headers["Location"] == json_of(response)["status_url"] == f"/objects/{task_id}"
        status = poll(client, response.headers["Location"])
        assert status.status_code == 200, status.data
        assert json_of(status)["state"] == "SUCCESS", status.data
        ref = json_of(status)["ref"]
        assert ref["object_key"] == key and ref["size"] == len(body) and ref["bucket"] == stack.settings.bucket
        content_url = json_of(response)["content_url"]
        content = client.get(content_url)
        assert content.status_code == 200, content.data
        assert content.data == body
        assert content.headers["Content-Type"] == content_type
        assert content.headers["Content-Length"] == str(len(body))
        assert content.headers["X-Content-Type-Options"] == "nosniff"
        assert filename_of(content.headers["Content-Disposition"]) == filename
        head = client.head(content_url)
        assert head.status_code == 200 and head.data == b""
        for header in ("Content-Type", "Content-Length", "Content-Disposition"):
            assert head.headers[header] == content.headers[header], header
        assert client.head(response.headers["Location"]).status_code == 200

    raw_content = client.get(json_of(raw)["content_url"])
    assert raw_content.headers["Content-Disposition"] == (
        "attachment; filename=\"______.png\"; filename*=UTF-8''%D0%B0%D0%B2%D0%B0%D1%82%D0%B0%D1%80.png"
    )

    # S3 fails: 502 with the reason, for GET and HEAD alike.
    broken_s3 = create_app({"TESTING": True}, reader=unreachable_s3_reader()).test_client()
    content_url = json_of(raw)["content_url"]
    assert "S3 could not give the object back" in expect_error(broken_s3.get(content_url), 502)["error"]
    assert broken_s3.head(content_url).status_code == 502

    # The result expires (here: a lifetime of 0 s, and the backend forgets it as Redis would): 410, not PENDING.
    from workers.app import app

    monkeypatch.setattr(objects, "lifetime_s", lambda _: 0.0)
    task_id = json_of(form)["task_id"]
    app.backend.forget(task_id)
    expired = expect_error(client.get(f"/objects/{task_id}"), 410)
    assert expired["state"] == "EXPIRED" and "has expired" in expired["error"], expired
    assert expect_error(client.get(f"/objects/{task_id}/content"), 410)["state"] == "EXPIRED"


def test_bad_key_reports_failure_with_the_invalid_key_error(stack: Stack, client: FlaskClient) -> None:
    stack.start_worker(S3BATCH_MAX_BATCH_AGE=1)
    response = client.post(
        "/objects", query_string={"key": "k" * 1025}, data=b"data", content_type="application/octet-stream"
    )
    assert response.status_code == 202, response.data

    failure = expect_error(poll(client, response.headers["Location"]), 422)
    assert failure["state"] == "FAILURE" and failure["error_type"] == "InvalidKeyError", failure
    assert "is 1025 UTF-8 bytes; S3 allows at most 1024" in failure["error"]
    content = expect_error(client.get(json_of(response)["content_url"]), 404)
    assert content["error"] == failure["error"] and content["error_type"] == "InvalidKeyError"


def test_requests_that_cannot_be_served_yet_or_at_all(client: FlaskClient) -> None:
    from workers.app import app
    from workers.results import ResultWriter

    assert "key" in expect_error(client.post("/objects", data=b"no key", content_type="text/plain"), 400)["error"]
    no_file = client.post("/objects", data={"key": "no-file"}, content_type="multipart/form-data")
    assert "'file'" in expect_error(no_file, 400)["error"]
    expect_error(client.post("/objects", data={}, content_type="multipart/form-data"), 400)  # an empty form
    expect_error(client.post("/objects", data="key=k", content_type="application/x-www-form-urlencoded"), 400)
    malformed = client.post("/objects?key=k", data=b"--x\r\nno headers", content_type="multipart/form-data; boundary=x")
    expect_error(malformed, 400)
    expect_error(client.get("/objects/not-a-task-id"), 404)
    expect_error(client.get("/nowhere"), 404)
    not_allowed = client.get("/objects")
    expect_error(not_allowed, 405)
    assert "POST" in not_allowed.headers["Allow"]
    delete = client.delete(f"/objects/{uuid.uuid4()}")
    expect_error(delete, 405)
    assert "GET" in delete.headers["Allow"] and "HEAD" in delete.headers["Allow"]

    unknown = str(uuid.uuid4())  # not issued by this app (not a UUIDv7)
    assert expect_error(client.get(f"/objects/{unknown}"), 404)["state"] == "UNKNOWN"
    assert expect_error(client.get(f"/objects/{unknown}/content"), 404)["state"] == "UNKNOWN"

    pending = new_task_id()  # issued just now, never sent: PENDING as far as anyone can tell
    assert json_of(client.get(f"/objects/{pending}")) == {"task_id": pending, "state": "PENDING"}
    assert expect_error(client.get(f"/objects/{pending}/content"), 409)["state"] == "PENDING"

    expired = old_task_id()  # issued eight days ago; results live a week
    assert expect_error(client.get(f"/objects/{expired}"), 410)["state"] == "EXPIRED"
    assert expect_error(client.get(f"/objects/{expired}/content"), 410)["state"] == "EXPIRED"

    staged = new_task_id()
    ResultWriter(app).mark_staged(staged, {"object_key": "k", "size": 1, "sha256": "0" * 64}, "0", "")
    try:
        assert json_of(client.get(f"/objects/{staged}"))["staged"]["object_key"] == "k"
        assert expect_error(client.get(f"/objects/{staged}/content"), 409)["state"] == "STAGED"
    finally:
        app.backend.forget(staged)


def test_objects_over_the_limit_are_refused_with_413() -> None:
    limit = 1000
    small = create_app({"TESTING": True, "S3BATCH_MAX_OBJECT_BYTES": limit}).test_client()
    raw = expect_error(small.post("/objects?key=k", data=b"x" * (limit + 1), content_type="text/plain"), 413)
    assert f"{limit + 1} bytes" in raw["error"] and "S3BATCH_MAX_OBJECT_BYTES" in raw["error"]
    form = small.post("/objects", data={"key": "k", "file": (io.BytesIO(b"x" * (limit + 1)), "f")})
    expect_error(form, 413)
    huge = small.post("/objects?key=k", data=b"x" * (limit + 70 * 1024), content_type="text/plain")
    expect_error(huge, 413)  # refused from its Content-Length, before it is read


def test_an_unexpected_error_is_a_json_500_without_traceback(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(task_id: str) -> objects.Reply:
        raise ValueError("a secret detail")

    monkeypatch.setattr(objects, "task_status", broken)
    body = expect_error(client.get(f"/objects/{new_task_id()}"), 500)
    assert "secret" not in json.dumps(body) and "Traceback" not in json.dumps(body)


OUTAGE = (
    STOP_REDIS
    + """
import json
from examples.flask_app.app import create_app
client = create_app({"TESTING": True}).test_client()
first = client.post("/objects?key=k", data=b"x", content_type="text/plain")
assert first.status_code == 202, first.data
task_id = first.get_json()["task_id"]
stop_redis()
for response in (
    client.post("/objects?key=k", data=b"x", content_type="text/plain"),
    client.get(f"/objects/{task_id}"),
    client.get(f"/objects/{task_id}/content"),
):
    print(json.dumps({"status": response.status_code, "content_type": response.headers.get("Content-Type"),
                      "body": response.get_json(), "retry_after": response.headers.get("Retry-After")}))
"""
)


def test_redis_outage_is_a_json_503(tmp_path: Path) -> None:
    answers = run_outage(OUTAGE, tmp_path)
    assert len(answers) == 3, answers
    for answer in answers:
        assert_json_error(answer["status"], answer["content_type"], answer["body"], 503)
        assert "Redis" in answer["body"]["error"] and answer["retry_after"], answer
