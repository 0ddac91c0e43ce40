"""What the tests of both example apps share: reading headers, an unreachable S3, and a Redis that goes away."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from werkzeug.http import parse_options_header

from batcher import BatchReader
from examples.taskids import new_task_id

ROOT = Path(__file__).resolve().parent.parent
EIGHT_DAYS_S = 8 * 24 * 3600


def filename_of(content_disposition: str) -> str | None:
    """The download name a browser reads from the header: ``filename*`` (RFC 5987) over ``filename`` (RFC 6266)."""
    disposition, params = parse_options_header(content_disposition)
    assert disposition == "attachment", content_disposition
    return params.get("filename")


def old_task_id() -> str:
    """A task id this app could have issued eight days ago: past s3batch's default result lifetime of a week
    (S3BATCH_RESULT_EXPIRES)."""
    return new_task_id(time.time() - EIGHT_DAYS_S)


def unreachable_s3_reader() -> BatchReader:
    """A reader whose S3 refuses connections at once (one attempt, no retries)."""
    config = Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=1, read_timeout=1)
    return BatchReader(boto3.client("s3", endpoint_url="http://127.0.0.1:1", config=config))


def assert_json_error(status: int, content_type: str | None, body: Any, expected: int) -> None:
    """A JSON error: the expected status, a JSON content type and an ``error`` message."""
    assert status == expected, (status, body)
    assert (content_type or "").startswith("application/json"), content_type
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body


@contextmanager
def redis_server(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A redis-server of its own on a free port: (port, pid). Stopped at the end if still running."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield port, process.pid
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=10)


def run_outage(script: str, tmp_path: Path) -> list[dict[str, Any]]:
    """Run ``script`` in a fresh interpreter whose s3batch uses a Redis that the script stops midway.

    The script gets REDIS_PID (it sends SIGTERM to it after a first upload, see ``stop_redis``) and prints one
    JSON line per answer: ``{"status", "content_type", "body", "retry_after"}``. A fresh process because the
    Celery app in this one is configured, once, for the test session's Redis.
    """
    with redis_server(tmp_path) as (port, pid):
        url = f"redis://127.0.0.1:{port}/0"
        env = {
            **os.environ,
            "S3BATCH_REDIS_URL": url,
            "CELERY_BROKER_URL": url,
            "CELERY_RESULT_BACKEND": url,
            "REDIS_PID": str(pid),
            "PYTHONPATH": str(ROOT),
        }
        result = subprocess.run(
            [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
        )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


# Pasted into the outage scripts: stops the Redis and waits until its port refuses connections.
STOP_REDIS = """
import os, signal, socket, time
def stop_redis():
    os.kill(int(os.environ["REDIS_PID"]), signal.SIGTERM)
    port = int(os.environ["S3BATCH_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            time.sleep(0.05)
        except OSError:
            return
"""
