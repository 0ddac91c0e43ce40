"""BatchRef: the result dict round trip, the Range value, and malformed refs."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from batcher.errors import InvalidRefError, ReadError, S3BatchError
from batcher.models import BatchRef, StagedObject

SHA = hashlib.sha256(b"hello").hexdigest()


def ref_dict(**overrides: Any) -> dict[str, Any]:
    """A valid result dict for a 5-byte object at offset 1024, with ``overrides`` applied."""
    data: dict[str, Any] = {
        "bucket": "bucket-1",
        "key": "batches/01J0000000000000000000000.tar",
        "offset": 1024,
        "size": 5,
        "range": "bytes=1024-1028",
        "object_key": "users/42/avatar.png",
        "batch_id": "01J0000000000000000000000",
        "etag": '"abc123"',
        "sha256": SHA,
    }
    data.update(overrides)
    return data


def test_round_trip() -> None:
    data = ref_dict()
    ref = BatchRef.from_dict(data)
    assert ref.to_dict() == data
    assert BatchRef.from_dict(ref.to_dict()) == ref


def test_to_dict_is_json_serialisable() -> None:
    ref = BatchRef.from_dict(ref_dict(object_key="dir/ünïcødé key\n"))
    assert BatchRef.from_dict(json.loads(json.dumps(ref.to_dict()))) == ref


def test_to_dict_has_exactly_the_design_fields() -> None:
    assert set(BatchRef.from_dict(ref_dict()).to_dict()) == {
        "bucket", "key", "offset", "size", "range", "object_key", "batch_id", "etag", "sha256",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("offset", "size", "expected"),
    [
        (0, 1, "bytes=0-0"),
        (512, 1, "bytes=512-512"),
        (1024, 5, "bytes=1024-1028"),
        (1536, 100_000, "bytes=1536-101535"),
    ],
)
def test_range_is_inclusive(offset: int, size: int, expected: str) -> None:
    ref = BatchRef.from_dict(ref_dict(offset=offset, size=size, range=None))
    assert ref.range == expected
    assert ref.to_dict()["range"] == expected


def test_range_of_empty_object_is_empty() -> None:
    ref = BatchRef.from_dict(ref_dict(size=0, range=""))
    assert ref.range == ""
    assert ref.to_dict()["range"] == ""


def test_range_may_be_absent() -> None:
    data = ref_dict()
    del data["range"]
    assert BatchRef.from_dict(data).range == "bytes=1024-1028"


def test_staged_object_size_is_body_length() -> None:
    obj = StagedObject("rid", "k", b"12345", 0, hashlib.sha256(b"12345").hexdigest())
    assert obj.size == 5


@pytest.mark.parametrize("field", ["bucket", "key", "offset", "size", "object_key", "batch_id", "etag", "sha256"])
def test_missing_field_is_refused(field: str) -> None:
    data = ref_dict()
    del data[field]
    with pytest.raises(InvalidRefError, match=field):
        BatchRef.from_dict(data)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"offset": -1}, id="negative-offset"),
        pytest.param({"size": -1}, id="negative-size"),
        pytest.param({"size": True}, id="bool-size"),
        pytest.param({"offset": False}, id="bool-offset"),
        pytest.param({"offset": 1.0}, id="float-offset"),
        pytest.param({"size": "5"}, id="str-size"),
        pytest.param({"sha256": "abc"}, id="short-sha256"),
        pytest.param({"sha256": SHA.upper()}, id="uppercase-sha256"),
        pytest.param({"sha256": "g" * 64}, id="non-hex-sha256"),
        pytest.param({"sha256": None}, id="none-sha256"),
        pytest.param({"bucket": ""}, id="empty-bucket"),
        pytest.param({"key": None}, id="none-key"),
        pytest.param({"etag": 5}, id="int-etag"),
        pytest.param({"range": "bytes=1024-1029"}, id="range-too-long"),
        pytest.param({"range": "bytes=0-4"}, id="range-wrong-offset"),
        pytest.param({"size": 0, "range": "bytes=1024-1023"}, id="range-for-empty"),
    ],
)
def test_malformed_ref_is_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidRefError) as info:
        BatchRef.from_dict(ref_dict(**overrides))
    assert isinstance(info.value, ReadError)
    assert isinstance(info.value, S3BatchError)


@pytest.mark.parametrize("data", [None, [], "bucket", 42, [("bucket", "b")]])
def test_non_dict_is_refused(data: Any) -> None:
    with pytest.raises(InvalidRefError, match="dict"):
        BatchRef.from_dict(data)


def test_disagreeing_range_names_both_values() -> None:
    with pytest.raises(InvalidRefError) as info:
        BatchRef.from_dict(ref_dict(range="bytes=0-4"))
    assert "bytes=0-4" in str(info.value)
    assert "bytes=1024-1028" in str(info.value)


def test_constructor_validates_too() -> None:
    with pytest.raises(InvalidRefError, match="offset"):
        BatchRef("b", "k", -5, 1, "o", "id", "", SHA)
