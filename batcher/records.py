"""How a staged object is packed for Redis, in one place for Python and the Lua scripts.

A staged object is a Redis hash of two fields, its head (``h``: compact JSON of
key, SHA-256, content type, metadata and the adapter's context) and its body
(``b``), plus one queue entry ``"<staged_ms> <size> <record_id>"`` that keeps its
place, age and size for the claim. The scripts receive each object as
``OBJECT_STRIDE`` arguments (``pack``); ``lua/prelude.lua`` reads them and
encodes and parses queue entries the same way as ``encode_entry`` and
``parse_entry`` here. The fingerprint (of key and content) is what a record id
stays bound to for a week: the same id with another object is refused.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

from batcher.models import StagedObject

OBJECT_STRIDE = 5  # record_id, staged_ms, head, body, fingerprint: keep equal to prelude.lua's OBJECT_STRIDE
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


def fingerprint(obj: StagedObject) -> str:
    """What identifies an object's content for its record id: its key, SHA-256, content type and metadata."""
    facts = json.dumps([obj.object_key, obj.sha256, obj.content_type, dict(obj.metadata)], sort_keys=True)
    return hashlib.sha256(facts.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def pack(obj: StagedObject) -> list[Any]:
    """The OBJECT_STRIDE script arguments of one object to stage."""
    return [obj.record_id, obj.staged_ms, encode_head(obj), obj.body, fingerprint(obj)]


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


def new_epoch() -> str:
    """A fresh epoch value for staging: ``"<random id> <created ms>"``."""
    return f"{secrets.token_hex(8)} {int(time.time() * 1000)}"
