"""Callback tasks for the canvas tests, loaded by workers through S3BATCH_CELERY_CONFIG."""

from __future__ import annotations

import json
import os
from typing import Any

import redis

from workers.app import app


@app.task(name="tests.record_ref")
def record_ref(ref: dict[str, Any], user_id: int) -> dict[str, Any]:
    """What a user's chain step does with the ref: here, echo what it got."""
    return {"user_id": user_id, "object_key": ref["object_key"], "key": ref["key"]}


@app.task(name="tests.count_refs")
def count_refs(refs: list[dict[str, Any]]) -> dict[str, Any]:
    """A chord body: receives every member's ref."""
    return {"count": len(refs), "keys": sorted(ref["object_key"] for ref in refs)}


@app.task(name="tests.note_failure")
def note_failure(request: Any, exc: Exception, traceback: Any) -> None:
    """An errback: leaves the failure where the test can read it."""
    client = redis.Redis.from_url(os.environ["S3BATCH_REDIS_URL"])
    client.set(f"test-errback:{request.id}", json.dumps({"type": type(exc).__name__, "message": str(exc)}))
