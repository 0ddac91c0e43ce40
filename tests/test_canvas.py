"""Chains, links, groups, chords and errbacks over put_object run once its batch is decided."""

from __future__ import annotations

import json
import time
from typing import Any, cast

from celery import chord, group
from celery.result import AsyncResult

from tests.support import Stack

CONFIG: dict[str, Any] = {"S3BATCH_CELERY_CONFIG": "tests.celery_config_for_tests", "S3BATCH_MAX_BATCH_AGE": 300}


def test_chain_link_group_and_chord_get_the_ref(stack: Stack) -> None:
    from tests.canvas_tasks import count_refs, record_ref
    from workers.tasks import put_object

    # S3BATCH_MAX_BATCH_AGE=300 in the environment; the config module's 1 s wins (results within 30 s).
    stack.start_worker(**CONFIG)
    chained = (put_object.s("users/42/avatar.png", b"png") | record_ref.s(42)).delay()
    linked = put_object.apply_async(("linked", b"l"), link=record_ref.s(7))
    grouped = group(put_object.s(f"group/{i}", bytes([i])) for i in range(5)).apply_async()
    chorded = chord([put_object.s(f"chord/{i}", b"c" * i) for i in range(4)])(count_refs.s())

    result = chained.get(timeout=30)
    assert result["user_id"] == 42 and result["object_key"] == "users/42/avatar.png"
    # celery-types types parent as ResultBase | None; a chain's last result has its first as parent
    assert result["key"] == cast("AsyncResult[Any]", chained.parent).get(timeout=5)["key"]
    assert linked.get(timeout=30)["object_key"] == "linked"
    assert len(linked.children or []) == 1 or linked.state == "SUCCESS"
    refs = grouped.get(timeout=30)
    assert [ref["object_key"] for ref in refs] == [f"group/{i}" for i in range(5)]
    assert chorded.get(timeout=30) == {"count": 4, "keys": [f"chord/{i}" for i in range(4)]}


def test_errback_runs_when_the_batch_is_dead_lettered(stack: Stack) -> None:
    from tests.canvas_tasks import note_failure
    from workers.tasks import put_object

    stack.start_worker(**CONFIG)
    stack.s3.delete_bucket(Bucket=stack.settings.require_bucket())  # NoSuchBucket: a permanent failure
    result = put_object.apply_async(("doomed", b"x"), link_error=note_failure.s())
    deadline = time.monotonic() + 30
    while (raw := stack.staging.client.get(f"test-errback:{result.id}")) is None:
        assert time.monotonic() < deadline, result.state
        time.sleep(0.1)
    failure = json.loads(raw)
    assert failure["type"] == "DeadLetterError" and "NoSuchBucket" in failure["message"]
    assert result.state == "FAILURE"
