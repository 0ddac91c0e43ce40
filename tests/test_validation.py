"""Input checks done before staging: keys, bodies, content types and metadata (guarantee 7)."""

from __future__ import annotations

from typing import Any

import pytest

from batcher.errors import (
    InputError,
    InvalidBodyError,
    InvalidKeyError,
    InvalidMetadataError,
    ObjectTooLargeError,
    S3BatchError,
)
from batcher.validation import (
    MAX_KEY_BYTES,
    MAX_METADATA_BYTES,
    check_body,
    check_content_type,
    check_key,
    check_metadata,
)


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


# ---- keys ----


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("a", id="one-byte"),
        pytest.param("/", id="slash"),
        pytest.param("k" * 1024, id="1024-ascii"),
        pytest.param("é" * 512, id="1024-two-byte"),
        pytest.param("a" + "日" * 341, id="1024-three-byte"),
        pytest.param("😀" * 256, id="1024-four-byte"),
        pytest.param("k" * 1020 + "😀", id="four-byte-char-ends-at-limit"),
        pytest.param("../../etc/passwd\n\x00", id="odd-but-valid"),
    ],
)
def test_check_key_accepts_1_to_1024_utf8_bytes(key: str) -> None:
    assert 1 <= utf8_len(key) <= MAX_KEY_BYTES
    assert check_key(key) is key


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("k" * 1025, id="1025-ascii"),
        pytest.param("é" * 512 + "a", id="1025-two-byte"),
        pytest.param("k" * 1021 + "😀", id="four-byte-char-crosses-limit"),
        pytest.param("😀" * 1024, id="1024-chars-4096-bytes"),
    ],
)
def test_check_key_rejects_more_than_1024_bytes(key: str) -> None:
    assert utf8_len(key) > MAX_KEY_BYTES
    with pytest.raises(InvalidKeyError) as info:
        check_key(key)
    assert str(utf8_len(key)) in str(info.value)
    assert "1024" in str(info.value)


def test_check_key_rejects_empty() -> None:
    with pytest.raises(InvalidKeyError, match="empty"):
        check_key("")


@pytest.mark.parametrize("key", [b"bytes-key", 42, None, ["a"]])
def test_check_key_rejects_non_str(key: Any) -> None:
    with pytest.raises(InvalidKeyError, match=type(key).__name__):
        check_key(key)


@pytest.mark.parametrize("key", ["\ud800", "abc\udfffdef", "a/\udc80"])
def test_check_key_rejects_lone_surrogates(key: str) -> None:
    with pytest.raises(InvalidKeyError, match="surrogate"):
        check_key(key)


def test_key_errors_are_input_errors() -> None:
    with pytest.raises(InputError):
        check_key("")
    assert issubclass(InvalidKeyError, S3BatchError)


# ---- bodies ----


@pytest.mark.parametrize(
    "body", [b"data", bytearray(b"data"), memoryview(b"data"), memoryview(bytearray(b"xdatax"))[1:5]]
)
def test_check_body_accepts_bytes_like_and_returns_bytes(body: Any) -> None:
    result = check_body("k", body, 100)
    assert type(result) is bytes
    assert result == b"data"


def test_check_body_accepts_empty_and_exact_limit() -> None:
    assert check_body("k", b"", 10) == b""
    assert check_body("k", b"x" * 10, 10) == b"x" * 10


def test_check_body_rejects_str_and_suggests_encoding() -> None:
    with pytest.raises(InvalidBodyError) as info:
        check_body("k", "text", 100)
    assert "str" in str(info.value)
    assert "encode" in str(info.value)


@pytest.mark.parametrize("body", [42, None, [1, 2], {"a": 1}])
def test_check_body_rejects_non_bytes(body: Any) -> None:
    with pytest.raises(InvalidBodyError, match=type(body).__name__) as info:
        check_body("k", body, 100)
    assert "encode" not in str(info.value)


def test_check_body_rejects_too_large_naming_the_limit() -> None:
    with pytest.raises(ObjectTooLargeError) as info:
        check_body("big/key", b"x" * 101, 100)
    message = str(info.value)
    assert "S3BATCH_MAX_OBJECT_BYTES" in message
    assert "100" in message
    assert "101" in message
    assert "big/key" in message
    assert isinstance(info.value, InputError)


def test_check_body_size_limit_applies_to_bytearray() -> None:
    with pytest.raises(ObjectTooLargeError):
        check_body("k", bytearray(11), 10)


# ---- content type ----


@pytest.mark.parametrize("content_type", [None, "image/png", "text/plain; charset=utf-8", "a" * 256])
def test_check_content_type_accepts(content_type: str | None) -> None:
    assert check_content_type("k", content_type) == content_type


@pytest.mark.parametrize(
    "content_type", [42, b"text/plain", "", "a" * 257, "text/plain\r\nX-Evil: 1", "tëxt/plain", "a\tb"]
)
def test_check_content_type_rejects(content_type: Any) -> None:
    with pytest.raises(InvalidMetadataError, match="content_type"):
        check_content_type("k", content_type)


# ---- metadata ----


def test_check_metadata_none_is_empty() -> None:
    assert check_metadata("k", None) == {}


def test_check_metadata_returns_a_plain_dict_copy() -> None:
    metadata = {"owner": "alice", "x-trace": "ünïcødé"}
    result = check_metadata("k", metadata)
    assert result == metadata
    assert result is not metadata


def test_check_metadata_accepts_exactly_2048_bytes() -> None:
    metadata = {"a": "v" * (MAX_METADATA_BYTES - 1)}
    assert check_metadata("k", metadata) == metadata


@pytest.mark.parametrize(
    ("metadata", "fragment"),
    [
        pytest.param({"n": 1}, "str", id="int-value"),
        pytest.param({"n": None}, "str", id="none-value"),
        pytest.param({"n": b"v"}, "str", id="bytes-value"),
        pytest.param({1: "v"}, "str", id="int-name"),
        pytest.param({"": "v"}, "header name", id="empty-name"),
        pytest.param({"has space": "v"}, "header name", id="space-in-name"),
        pytest.param({"colon:": "v"}, "header name", id="colon-in-name"),
        pytest.param({"nämé": "v"}, "header name", id="non-ascii-name"),
        pytest.param({"a": "v" * MAX_METADATA_BYTES}, "2048", id="2049-bytes"),
        pytest.param({"a": "é" * 1024}, "2048", id="multibyte-over-limit"),
        pytest.param({"n": "\ud800"}, "UTF-8", id="surrogate-value"),
        pytest.param(["a", "b"], "dict", id="list"),
        pytest.param("a=b", "dict", id="str"),
    ],
)
def test_check_metadata_rejects(metadata: Any, fragment: str) -> None:
    with pytest.raises(InvalidMetadataError, match=fragment):
        check_metadata("k", metadata)


def test_check_metadata_counts_names_and_values_together() -> None:
    metadata = {f"name{i}": "v" * 200 for i in range(10)}  # 10 * (5 + 200) = 2050 bytes
    with pytest.raises(InvalidMetadataError, match="2050"):
        check_metadata("k", metadata)
