"""examples/objects.py and examples/taskids.py without a web framework: download names, task ids, error kinds."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError

from examples.objects import content_disposition, download_name, redis_unavailable
from examples.taskids import issued_at, lifetime_s, new_task_id
from tests.example_http import filename_of
from tests.support import Stack


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("users/42/avatar.png", "avatar.png"),
        ("flat", "flat"),
        ("dir/sub/", "sub"),
        ("a/../", "a"),
        ("///", "object"),
        ("tabs/a\tb\x7f.txt", "a_b_.txt"),
        ("ünï/cødé.txt", "cødé.txt"),
    ],
)
def test_download_name_is_the_last_segment(key: str, name: str) -> None:
    assert download_name(key) == name


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("report.pdf", 'attachment; filename="report.pdf"'),
        ("déjà vu.txt", "attachment; filename=\"deja vu.txt\"; filename*=UTF-8''d%C3%A9j%C3%A0%20vu.txt"),
        ("€ rates.csv", "attachment; filename=\"_ rates.csv\"; filename*=UTF-8''%E2%82%AC%20rates.csv"),
        ('say "hi"\\.txt', "attachment; filename=\"say _hi__.txt\"; filename*=UTF-8''say%20%22hi%22%5C.txt"),
        ("semi;colon.txt", 'attachment; filename="semi;colon.txt"'),
    ],
)
def test_content_disposition_has_an_ascii_fallback_and_the_exact_name(name: str, header: str) -> None:
    assert content_disposition(name) == header
    assert filename_of(header) == name
    assert header.isascii()


def test_task_ids_are_uuid7_and_tell_when_they_were_issued() -> None:
    before = datetime.now(UTC) - timedelta(milliseconds=1)
    task_id = new_task_id()
    issued = issued_at(task_id)
    assert uuid.UUID(task_id).version == 7 and uuid.UUID(task_id).variant == uuid.RFC_4122
    assert issued is not None and before <= issued <= datetime.now(UTC)
    two_days_ago = time.time() - 2 * 86400
    assert issued_at(new_task_id(two_days_ago)) == datetime.fromtimestamp(int(two_days_ago * 1000) / 1000, UTC)
    assert len({new_task_id(two_days_ago) for _ in range(1000)}) == 1000, "ids issued in one millisecond collide"
    assert issued_at(str(uuid.uuid4())) is None
    assert issued_at("not-a-uuid") is None


def test_result_lifetime_in_seconds() -> None:
    assert lifetime_s(timedelta(days=1)) == 86400.0
    assert lifetime_s(3600) == 3600.0
    assert lifetime_s(None) is None
    with pytest.raises(TypeError, match="result_expires"):
        lifetime_s("1 day")


def test_which_errors_mean_redis_is_unavailable() -> None:
    assert redis_unavailable(OperationalError("Error 111 connecting"))
    assert redis_unavailable(RedisConnectionError("refused"))
    assert redis_unavailable(OutOfMemoryError("OOM command not allowed"))
    assert redis_unavailable(
        RuntimeError("Retry limit exceeded while trying to reconnect to the Celery result store backend.")
    )
    assert not redis_unavailable(RuntimeError("something else"))
    assert not redis_unavailable(ResponseError("WRONGTYPE"))
    assert not redis_unavailable(ValueError("bad"))


def test_a_task_whose_message_the_broker_lost_is_reported_lost(stack: Stack) -> None:
    """PENDING for longer than a dead worker's messages take to come back, and not in the queue: 410 LOST."""
    from examples.objects import task_status
    from workers.redelivery import lost_after_s
    from workers.tasks import put_object

    long_ago = new_task_id(time.time() - lost_after_s(put_object.app) - 5)
    reply = task_status(long_ago)
    assert (reply.status, reply.body["state"]) == (410, "LOST") and "upload the object again" in reply.body["error"]
    fresh = task_status(new_task_id())
    assert (fresh.status, fresh.body["state"]) == (200, "PENDING")  # sent just now: not lost, only not staged yet
