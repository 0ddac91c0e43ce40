"""How a staged object is packed for Redis, in one place for Python and the Lua scripts.

A staged object is a Redis hash of two fields, its head (``h``: compact JSON of
key, SHA-256, content type, metadata and the adapter's context) and its body
(``b``), plus one queue entry ``"<staged_ms> <size> <record_id>"`` that keeps its
place, age and size for the claim. The scripts receive each object as
``OBJECT_STRIDE`` arguments (``pack``); ``lua/prelude.lua`` reads them and
encodes and parses queue entries the same way as ``encode_entry`` and
``parse_entry`` here.
"""

from __future__ import annotations

import json
from typing import Any

from batcher.models import StagedObject

OBJECT_STRIDE = 4  # record_id, staged_ms, head, body: keep equal to prelude.lua's OBJECT_STRIDE
HEAD_FIELD = b"h"
BODY_FIELD = b"b"


def encode_entry(staged_ms: int, size: int, record_id: str) -> bytes:
    """The queue entry of one object (prelude.lua's ``entry_encode``)."""
    return b"%d %d %s" % (staged_ms, size, record_id.encode())


def parse_entry(entry: bytes) -> tuple[int, int, str]:
    """(staged_ms, size, record_id) of a queue entry (prelude.lua's ``entry_parse``)."""
    ms, size, record_id = entry.split(b" ", 2)
    return int(ms), int(size), record_id.decode()


def encode_head(obj: StagedObject) -> str:
    """The head of ``obj``: everything but its body, staging time and size (those live in its queue entry)."""
    head: dict[str, Any] = {"k": obj.object_key, "s": obj.sha256}
    if obj.content_type:
        head["t"] = obj.content_type
    if obj.metadata:
        head["m"] = dict(obj.metadata)
    if obj.context:
        head["c"] = obj.context
    return json.dumps(head, separators=(",", ":"), ensure_ascii=False)


def pack(obj: StagedObject) -> list[Any]:
    """The OBJECT_STRIDE script arguments of one object to stage."""
    return [obj.record_id, obj.staged_ms, encode_head(obj), obj.body]


def unpack_head(entry: bytes, head: bytes) -> StagedObject:
    """A staged object without its body (``body`` empty, ``size`` from its entry)."""
    staged_ms, size, record_id = parse_entry(entry)
    fields = json.loads(head)
    return StagedObject(
        record_id=record_id,
        object_key=fields["k"],
        body=b"",
        staged_ms=staged_ms,
        sha256=fields["s"],
        content_type=fields.get("t"),
        metadata=fields.get("m") or {},
        context=fields.get("c"),
        size=size,
    )
