"""Checks on a put_object call, done before anything touches Redis (guarantee 7)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from batcher.errors import InvalidBodyError, InvalidKeyError, InvalidMetadataError, ObjectTooLargeError

MAX_KEY_BYTES = 1024
# S3 counts user metadata as the UTF-8 bytes of every name and value, 2 KiB in all.
MAX_METADATA_BYTES = 2048
MAX_CONTENT_TYPE_BYTES = 256
_METADATA_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # an HTTP header token
_PRINTABLE_ASCII = re.compile(r"^[\x20-\x7e]+$")


def check_key(key: Any) -> str:
    """The key itself; raises InvalidKeyError unless it is 1 to 1024 bytes of valid UTF-8 text."""
    if not isinstance(key, str):
        raise InvalidKeyError(f"object key must be a str, got {type(key).__name__}")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidKeyError(
            f"object key {key[:80]!r} is not valid UTF-8 (lone surrogate at index {exc.start})"
        ) from None
    if size == 0:
        raise InvalidKeyError("object key is empty: S3 keys are 1 to 1024 UTF-8 bytes")
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(f"object key {key[:60]!r}... is {size} UTF-8 bytes; S3 allows at most {MAX_KEY_BYTES}")
    return key


def check_body(key: str, body: Any, max_object_bytes: int) -> bytes:
    """The body as bytes; raises InvalidBodyError for non bytes-like, ObjectTooLargeError past the limit."""
    if isinstance(body, bytes):
        data = body
    elif isinstance(body, bytearray | memoryview):
        data = bytes(body)
    else:
        hint = " (encode text first, for example body.encode('utf-8'))" if isinstance(body, str) else ""
        raise InvalidBodyError(f"body of {key!r} must be bytes-like, got {type(body).__name__}{hint}")
    if len(data) > max_object_bytes:
        raise ObjectTooLargeError(
            f"body of {key!r} is {len(data)} bytes; S3BATCH_MAX_OBJECT_BYTES allows at most "
            f"{max_object_bytes} (upload larger objects with a plain PutObject)"
        )
    return data


def check_content_type(key: str, content_type: Any) -> str | None:
    """The content type or None; raises InvalidMetadataError unless it is short printable ASCII."""
    if content_type is None:
        return None
    if not isinstance(content_type, str):
        raise InvalidMetadataError(f"content_type of {key!r} must be a str, got {type(content_type).__name__}")
    if not _PRINTABLE_ASCII.match(content_type) or len(content_type) > MAX_CONTENT_TYPE_BYTES:
        raise InvalidMetadataError(
            f"content_type of {key!r} must be 1 to {MAX_CONTENT_TYPE_BYTES} printable ASCII characters, "
            f"got {content_type[:80]!r}"
        )
    return content_type


def check_metadata(key: str, metadata: Any) -> dict[str, str]:
    """Metadata as a plain dict; raises InvalidMetadataError unless str->str within S3's 2 KiB."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidMetadataError(f"metadata of {key!r} must be a dict of str to str, got {type(metadata).__name__}")
    total = 0
    for name, value in metadata.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidMetadataError(
                f"metadata of {key!r} must map str to str; {name!r} -> {type(value).__name__} is not"
            )
        if not _METADATA_NAME.match(name):
            raise InvalidMetadataError(f"metadata name {name!r} of {key!r} is not a valid HTTP header name")
        try:
            total += len(name.encode("utf-8")) + len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidMetadataError(f"metadata value of {name!r} for {key!r} is not valid UTF-8") from None
    if total > MAX_METADATA_BYTES:
        raise InvalidMetadataError(
            f"metadata of {key!r} is {total} bytes; S3 allows {MAX_METADATA_BYTES} bytes of names and values"
        )
    return dict(metadata)
