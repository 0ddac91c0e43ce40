"""The batch format's own records (version 1): member facts, the index member, the trailer, S3 metadata.

Every object member carries its facts (exact key, SHA-256, content type, user
metadata) as JSON in its pax ``comment`` record, which every tar tool ignores.
After the objects come two members of the reserved ``.s3batch/`` directory:
the index (JSON lines: one header, then one row per object) and a one-block
trailer that gives the index's data offset, size and SHA-256. The trailer is
the archive's last non-zero block, so a reader finds it in one suffix-range
GET and needs a second ranged GET only for an index that the first did not
cover. The README's "Batch format (version 1)" section is the specification.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from batcher.errors import CorruptedBatchError, InvalidRefError
from batcher.membernames import RESERVED_DIR
from batcher.models import BatchRef

FORMAT_VERSION = 1
INDEX_NAME = f"{RESERVED_DIR}/index.jsonl"
TRAILER_NAME = f"{RESERVED_DIR}/trailer"
INDEX_FIELDS = ("key", "name", "offset", "size", "sha256", "content_type", "metadata")
_TRAILER_MAGIC = "s3batch-trailer"
TRAILER_SIZE = len(f"{_TRAILER_MAGIC} 1 {0:020d} {0:020d} {'0' * 64}\n")  # 125 bytes, one data block
BLOCK = tarfile.BLOCKSIZE
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# S3 user metadata of every batch (x-amz-meta-*); lowercase, as S3 and moto give them back.
META_FORMAT = "s3batch-format"
META_BATCH_ID = "s3batch-batch-id"
META_OBJECTS = "s3batch-objects"
META_CREATED = "s3batch-created"
META_WRITER = "s3batch-writer"
META_INDEX = "s3batch-index"  # "offset,size,sha256" of the index member's data


# The writer names the format, not the package version: a batch claimed before an upgrade and rebuilt
# after it must give the same bytes, or the conditional upload would see a conflict.
WRITER = f"s3batch format {FORMAT_VERSION}"


def is_reserved(name: str) -> bool:
    """True for the batch's own members (its index and trailer), which are not objects."""
    return name.startswith(f"{RESERVED_DIR}/")


def iso_utc(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC, for example ``2025-11-24T16:00:00.123Z``."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class IndexEntry(NamedTuple):
    """One object as the batch records it; ``name`` is the member name (the key where it is a safe path)."""

    key: str
    name: str
    offset: int
    size: int
    sha256: str
    content_type: str | None
    metadata: Mapping[str, str]


@dataclass(frozen=True)
class IndexLocation:
    """Where the index member's data is: ``size`` bytes at ``offset``, with that SHA-256."""

    offset: int
    size: int
    sha256: str


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a batch: its ref, member name, content type and user metadata."""

    ref: BatchRef
    name: str
    content_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def entry(self) -> IndexEntry:
        ref = self.ref
        return IndexEntry(
            ref.object_key, self.name, ref.offset, ref.size, ref.sha256, self.content_type, dict(self.metadata)
        )


@dataclass(frozen=True)
class BatchIndex:
    """A batch's facts and its objects in tar order, as its index member lists them."""

    bucket: str
    key: str
    etag: str
    batch_id: str
    created: str
    writer: str
    objects: list[ObjectInfo]
    format: int = FORMAT_VERSION

    @property
    def refs(self) -> list[BatchRef]:
        return [info.ref for info in self.objects]


# ---- member facts (pax comment) ----


def member_comment(entry: IndexEntry) -> str:
    """The member's facts as compact JSON for its pax ``comment`` record; ``key`` only where it is not the name."""
    facts: dict[str, object] = {"s3batch": FORMAT_VERSION, "sha256": entry.sha256}
    if entry.name != entry.key:
        facts["key"] = entry.key
    if entry.content_type:
        facts["content_type"] = entry.content_type
    if entry.metadata:
        facts["metadata"] = dict(entry.metadata)
    return _json(facts)


def member_entry(info: tarfile.TarInfo) -> IndexEntry:
    """The facts of an object member read back from its header; raises CorruptedBatchError if they are not ours."""
    where = f"member {info.name!r} at byte {info.offset}"
    try:
        facts = json.loads(info.pax_headers["comment"])
    except (KeyError, ValueError) as exc:
        raise CorruptedBatchError(f"{where} has no s3batch facts in its pax comment") from exc
    if not isinstance(facts, dict) or facts.get("s3batch") != FORMAT_VERSION:
        raise CorruptedBatchError(f"{where} has a pax comment that is not s3batch format {FORMAT_VERSION}")
    entry = IndexEntry(
        facts.get("key", info.name), info.name, info.offset_data, info.size, facts.get("sha256", ""),
        facts.get("content_type"), facts.get("metadata", {}),
    )  # fmt: skip
    _check_entry(entry, where)
    return entry


def _check_entry(entry: IndexEntry, where: str) -> None:
    key, name, offset, size, sha256, content_type, metadata = entry
    good = (
        isinstance(key, str) and key != "" and isinstance(name, str) and name != ""
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (offset, size))
        and isinstance(sha256, str) and _SHA256_HEX.match(sha256) is not None
        and (content_type is None or isinstance(content_type, str))
        and isinstance(metadata, dict) and all(isinstance(v, str) for kv in metadata.items() for v in kv)
    )  # fmt: skip
    if not good:
        raise CorruptedBatchError(f"{where} has malformed s3batch facts: {entry!r:.300}")


# ---- the index member ----


def encode_index(batch_id: str, created_ms: int, entries: Sequence[IndexEntry]) -> bytes:
    """The index member's data: a JSON header line, then one JSON array per object (``name`` null if the key)."""
    header = {
        "s3batch_index": FORMAT_VERSION,
        "batch_id": batch_id,
        "objects": len(entries),
        "created": iso_utc(created_ms),
        "writer": WRITER,
        "fields": list(INDEX_FIELDS),
    }
    lines = [_json_line(header)]
    for key, name, offset, size, sha256, content_type, metadata in entries:
        row = [key, None if name == key else name, offset, size, sha256, content_type, dict(metadata)]
        lines.append(_json_line(row))
    return ("\n".join(lines) + "\n").encode("utf-8")


def decode_index(data: bytes, *, bucket: str, key: str, etag: str) -> BatchIndex:
    """The BatchIndex of an index member's data; raises CorruptedBatchError when it is not a valid index."""
    where = f"the index of s3://{bucket}/{key}"
    try:
        lines = data.decode("utf-8").split("\n")
        header = json.loads(lines[0])
        rows = [json.loads(line) for line in lines[1:-1]]
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CorruptedBatchError(f"{where} is not UTF-8 JSON lines: {exc}") from exc
    if not isinstance(header, dict) or header.get("s3batch_index") != FORMAT_VERSION or lines[-1] != "":
        raise CorruptedBatchError(f"{where} is not an s3batch index of format {FORMAT_VERSION}")
    if header.get("objects") != len(rows) or header.get("fields") != list(INDEX_FIELDS):
        raise CorruptedBatchError(f"{where} lists {len(rows)} rows, its header says {header.get('objects')!r}")
    batch_id = header.get("batch_id")
    if not isinstance(batch_id, str) or not batch_id:
        raise CorruptedBatchError(f"{where} has no batch_id: {batch_id!r}")
    objects = []
    for n, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(INDEX_FIELDS):
            raise CorruptedBatchError(f"{where} has a malformed row {n}: {row!r:.200}")
        entry = IndexEntry(row[0], row[1] if row[1] is not None else row[0], *row[2:])
        _check_entry(entry, f"row {n} of {where}")
        try:
            ref = BatchRef(bucket, key, entry.offset, entry.size, entry.key, batch_id, etag, entry.sha256)
        except InvalidRefError as exc:
            raise CorruptedBatchError(f"row {n} of {where}: {exc}") from exc
        objects.append(ObjectInfo(ref, entry.name, entry.content_type, entry.metadata))
    return BatchIndex(bucket, key, etag, batch_id, str(header.get("created")), str(header.get("writer")), objects)


# ---- the trailer ----


def encode_trailer(location: IndexLocation) -> bytes:
    """The trailer member's data: ``s3batch-trailer 1 <offset:20> <size:20> <sha256>\\n``, 125 bytes."""
    data = f"{_TRAILER_MAGIC} {FORMAT_VERSION} {location.offset:020d} {location.size:020d} {location.sha256}\n"
    return data.encode("ascii")


def decode_trailer(data: bytes) -> IndexLocation:
    """The index location that a trailer's data gives; raises CorruptedBatchError for anything else."""
    fields = data.split(b" ")
    if len(data) != TRAILER_SIZE or len(fields) != 5 or fields[0] != _TRAILER_MAGIC.encode():
        raise CorruptedBatchError(f"not an s3batch trailer: {data[:80]!r}")
    if fields[1] != str(FORMAT_VERSION).encode():
        raise CorruptedBatchError(f"s3batch trailer of format {fields[1]!r}; this reader knows {FORMAT_VERSION}")
    sha256 = fields[4].rstrip(b"\n").decode("ascii", "replace")
    if not (fields[2].isdigit() and fields[3].isdigit() and _SHA256_HEX.match(sha256)):
        raise CorruptedBatchError(f"malformed s3batch trailer: {data!r}")
    return IndexLocation(int(fields[2]), int(fields[3]), sha256)


def locate_index(tail: bytes, total: int) -> IndexLocation:
    """The index location from the last ``len(tail)`` bytes of a ``total``-byte batch.

    The trailer's data is the last non-zero block, its header the block before; at least the
    two zero blocks that end a tar follow. Raises CorruptedBatchError when that is not so.
    """
    start = total - len(tail)
    if total % BLOCK or start % BLOCK or start < 0:
        raise CorruptedBatchError(f"a tar is whole 512-byte blocks; this object has {total} bytes")
    end = len(tail)
    while end >= BLOCK and not any(tail[end - BLOCK : end]):
        end -= BLOCK
    if len(tail) - end < 2 * BLOCK or end < 2 * BLOCK:
        raise CorruptedBatchError(f"no s3batch trailer before the end-of-archive blocks in the last {len(tail)} bytes")
    try:
        header = tarfile.TarInfo.frombuf(tail[end - 2 * BLOCK : end - BLOCK], "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        raise CorruptedBatchError(f"the block before the trailer is not a tar header ({exc})") from exc
    if header.name != TRAILER_NAME or not header.isreg() or header.size != TRAILER_SIZE:
        raise CorruptedBatchError(f"the last member is {header.name!r}, not an s3batch trailer")
    location = decode_trailer(tail[end - BLOCK : end - BLOCK + TRAILER_SIZE])
    if location.offset + location.size > start + end - 2 * BLOCK:
        raise CorruptedBatchError(f"the trailer points past itself: {location}")
    return location


# ---- S3 metadata ----


def s3_metadata(batch_id: str, created_ms: int, objects: int, location: IndexLocation) -> dict[str, str]:
    """The batch facts stored as the tar's S3 user metadata, so that one HEAD finds them and the index."""
    return {
        META_FORMAT: str(FORMAT_VERSION),
        META_BATCH_ID: batch_id,
        META_OBJECTS: str(objects),
        META_CREATED: iso_utc(created_ms),
        META_WRITER: WRITER,
        META_INDEX: f"{location.offset},{location.size},{location.sha256}",
    }


def location_from_metadata(metadata: Mapping[str, str]) -> IndexLocation | None:
    """The index location that a HEAD's user metadata gives, or None when the object has none."""
    offset, _, rest = metadata.get(META_INDEX, "").partition(",")
    size, _, sha256 = rest.partition(",")
    if not (offset.isdigit() and size.isdigit() and _SHA256_HEX.match(sha256)):
        return None
    return IndexLocation(int(offset), int(size), sha256)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _json_line(value: Any) -> str:
    """Compact JSON on one line for every line splitter: the separators JSON may leave raw are escaped too."""
    return _json(value).translate(_LINE_BREAKS)


_LINE_BREAKS = {ord(ch): f"\\u{ord(ch):04x}" for ch in "\x85\u2028\u2029"}
