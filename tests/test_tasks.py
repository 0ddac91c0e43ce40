"""The put_object task refuses bad input with specific errors and disturbs nothing else."""

from __future__ import annotations

import pytest

from batcher.errors import (
    ContentRefusedError,
    InvalidBodyError,
    InvalidKeyError,
    InvalidMetadataError,
    ObjectTooLargeError,
)
from tests.support import Stack


def test_bad_input_fails_its_own_task_only(stack: Stack) -> None:
    from workers.tasks import put_object

    stack.start_worker(S3BATCH_MAX_OBJECT_BYTES=1000, S3BATCH_MAX_BATCH_AGE=1)
    good_before = put_object.delay("good/before", b"fine")
    bad = {
        "str body": (put_object.delay("k", "text, not bytes"), InvalidBodyError, "must be bytes-like"),
        "empty key": (put_object.delay("", b"x"), InvalidKeyError, "empty"),
        "1025-byte key": (put_object.delay("k" * 1025, b"x"), InvalidKeyError, "1025 UTF-8 bytes"),
        "too large": (put_object.delay("big", b"x" * 1001), ObjectTooLargeError, "S3BATCH_MAX_OBJECT_BYTES"),
        "metadata value": (
            put_object.delay("m", b"x", metadata={"n": 1}),
            InvalidMetadataError,
            "str to str",
        ),
        "metadata type": (put_object.delay("m", b"x", metadata=["a"]), InvalidMetadataError, "dict"),
        "content type": (put_object.delay("c", b"x", content_type=5), InvalidMetadataError, "content_type"),
        "int body": (put_object.delay("i", 42), InvalidBodyError, "got int"),
    }
    good_after = put_object.delay("good/after", bytearray(b"also fine"))
    for name, (result, error, message) in bad.items():
        with pytest.raises(error, match=message):
            result.get(timeout=20)
        assert result.state == "FAILURE", name
    assert good_before.get(timeout=20)["size"] == 4
    assert good_after.get(timeout=20)["size"] == 9
    members = {m.name for key in stack.batch_keys() for m in stack.members(key)}
    assert members == {"good/before", "good/after"}


def test_pickle_message_is_refused_with_a_failure(stack: Stack) -> None:
    from workers.tasks import put_object

    stack.start_worker()
    result = put_object.apply_async(("pickled", b"x"), serializer="pickle")
    with pytest.raises(ContentRefusedError, match="accept only JSON"):
        result.get(timeout=20)
    assert stack.staging.totals()["queued_objects"] == 0
    assert stack.batch_keys() == []
