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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from batcher.errors import CorruptedBatchError, InvalidRefError, MemoryLimitError
from batcher.membernames import RESERVED_DIR
from batcher.models import BatchRef
from batcher.printable import printable, quoted
from batcher.tarheader import REGULAR, check_name, parse_header
from batcher.validation import MAX_CONTENT_TYPE_BYTES, MAX_KEY_BYTES, MAX_METADATA_BYTES

FORMAT_VERSION = 1
INDEX_NAME = f"{RESERVED_DIR}/index.jsonl"
TRAILER_NAME = f"{RESERVED_DIR}/trailer"
INDEX_FIELDS = ("key", "name", "offset", "size", "sha256", "content_type", "metadata")
_TRAILER_MAGIC = "s3batch-trailer"
TRAILER_SIZE = len(f"{_TRAILER_MAGIC} 1 {0:020d} {0:020d} {'0' * 64}\n")  # 125 bytes, one data block
BLOCK = tarfile.BLOCKSIZE
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_TYPE = re.compile(r"^[\x20-\x7e]+$")  # as batcher.validation accepts them
_METADATA_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_MAX_OFFSET = 2**63  # S3 objects are at most 5 TiB; no offset or size the writer makes comes near
# The longest index line the writer makes is about 25 KiB: a 1,024-byte key JSON-escaped (6 KiB), its
# escaped member name (3 KiB) and 2 KiB of metadata JSON-escaped (12 KiB). Longer lines are refused
# before they are decoded, which also bounds what one line can cost in memory.
MAX_INDEX_LINE_BYTES = 64 * 1024
# What one decoded index row holds in memory besides its text (BatchRef, ObjectInfo, the row's strings
# and dict), and per metadata item; measured with tracemalloc (about 550 and 85 bytes), rounded up.
ROW_MEMORY_BYTES = 700
METADATA_ITEM_MEMORY_BYTES = 100
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


@dataclass(frozen=True, slots=True)
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
    where = f"member {quoted(info.name)} at byte {info.offset}"
    return entry_from_facts(info.name, info.offset_data, info.size, info.pax_headers.get("comment"), where)


def entry_from_facts(name: str, offset: int, size: int, comment: str | None, where: str) -> IndexEntry:
    """The facts of an object member from its name, data offset, size and pax ``comment``.

    Raises CorruptedBatchError when the comment is missing, not s3batch JSON of this format, or says
    something the writer never writes (see ``check_entry``).
    """
    if comment is None:
        raise CorruptedBatchError(f"{where} has no s3batch facts in its pax comment")
    facts = _json_value(comment, f"the pax comment of {where}")
    if not isinstance(facts, dict) or facts.get("s3batch") != FORMAT_VERSION:
        raise CorruptedBatchError(f"{where} has a pax comment that is not s3batch format {FORMAT_VERSION}")
    entry = IndexEntry(
        facts.get("key", name), name, offset, size, facts.get("sha256", ""),
        facts.get("content_type"), facts.get("metadata", {}),
    )  # fmt: skip
    check_entry(entry, where)
    return entry


def check_entry(entry: IndexEntry, where: str) -> None:
    """Raise CorruptedBatchError unless ``entry`` holds what the writer writes.

    That is: a key of 1 to 1,024 UTF-8 bytes, a safe member name (batcher.tarheader.check_name), an
    offset and a size in 0..2**63, a SHA-256 in lowercase hex, a content type of 1 to 256 printable
    ASCII characters or None, and metadata of HTTP-token names and string values within S3's 2 KiB.
    """
    key, name, offset, size, sha256, content_type, metadata = entry
    if isinstance(name, str):
        check_name(name, where)  # first: the most specific refusal
    good = (
        isinstance(key, str) and key != "" and isinstance(name, str) and name != ""
        and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < _MAX_OFFSET for n in (offset, size))
        and isinstance(sha256, str) and _SHA256_HEX.match(sha256) is not None
        and (content_type is None or (isinstance(content_type, str) and len(content_type) <= MAX_CONTENT_TYPE_BYTES
                                      and _CONTENT_TYPE.match(content_type) is not None))
        and isinstance(metadata, dict) and all(isinstance(v, str) for kv in metadata.items() for v in kv)
        and _utf8_size(key) <= MAX_KEY_BYTES and _metadata_size(metadata) <= MAX_METADATA_BYTES
    )  # fmt: skip
    if not good:
        raise CorruptedBatchError(f"{where} has malformed s3batch facts: {entry!r:.300}")


def _utf8_size(text: str) -> int:
    """UTF-8 bytes of ``text``; more than any limit for text that has no UTF-8 form (a lone surrogate)."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return _MAX_OFFSET


def _metadata_size(metadata: dict[str, str]) -> int:
    """S3's count of user metadata (UTF-8 bytes of names and values); past any limit for a bad name."""
    if not metadata:
        return 0
    if not all(_METADATA_NAME.match(name) for name in metadata):
        return _MAX_OFFSET
    return sum(_utf8_size(name) + _utf8_size(value) for name, value in metadata.items())


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


@dataclass(frozen=True)
class IndexHeader:
    """The index's first line: the batch's id, creation time, writer, and how many rows follow."""

    batch_id: str
    created: str
    writer: str
    objects: int


def decode_index(data: bytes, *, bucket: str, key: str, etag: str, max_memory_bytes: int | None = None) -> BatchIndex:
    """The BatchIndex of an index member's data; raises CorruptedBatchError when it is not a valid index.

    With ``max_memory_bytes``, raises MemoryLimitError as soon as ``data`` and the objects decoded from
    it (estimated per row: ROW_MEMORY_BYTES, its text, METADATA_ITEM_MEMORY_BYTES per metadata item)
    would hold more: a small index can decode to many times its size.
    """
    where = f"the index of s3://{printable(bucket)}/{printable(key)}"
    header, rows = read_index(data, where)
    held = len(data)
    objects = []
    for n, (entry, line_bytes) in enumerate(rows):
        held += ROW_MEMORY_BYTES + line_bytes + METADATA_ITEM_MEMORY_BYTES * len(entry.metadata)
        if max_memory_bytes is not None and held > max_memory_bytes:
            raise MemoryLimitError(
                f"{where} lists {header.objects:,} objects; decoding them takes more than the reader's "
                f"max_memory_bytes ({max_memory_bytes:,}) after {n:,} of them: raise max_memory_bytes"
            )
        try:
            ref = BatchRef(bucket, key, entry.offset, entry.size, entry.key, header.batch_id, etag, entry.sha256)
        except InvalidRefError as exc:
            raise CorruptedBatchError(f"row {n} of {where}: {exc}") from exc
        objects.append(ObjectInfo(ref, entry.name, entry.content_type, entry.metadata))
    return BatchIndex(bucket, key, etag, header.batch_id, header.created, header.writer, objects)


def read_index(data: bytes, where: str) -> tuple[IndexHeader, Iterator[tuple[IndexEntry, int]]]:
    """The index's header, and its rows decoded one at a time as (entry, bytes of its line).

    Nothing but the current line is decoded at once, so checking an index against the members of a
    stream holds only its bytes. The rows iterator raises CorruptedBatchError for a malformed row and,
    at its end, when the rows are not as many as the header says or the data does not end a line.
    """
    end = data.find(b"\n", 0, MAX_INDEX_LINE_BYTES + 1)
    header = _json_value(data[: max(end, 0)], f"the header line of {where}") if end >= 0 else None
    if not isinstance(header, dict) or header.get("s3batch_index") != FORMAT_VERSION:
        raise CorruptedBatchError(f"{where} is not an s3batch index of format {FORMAT_VERSION}")
    objects = header.get("objects")
    if not isinstance(objects, int) or isinstance(objects, bool) or objects < 0:
        raise CorruptedBatchError(f"{where} has no object count in its header: {objects!r:.80}")
    if header.get("fields") != list(INDEX_FIELDS):
        raise CorruptedBatchError(f"{where} has fields {header.get('fields')!r:.200}, not {list(INDEX_FIELDS)}")
    batch_id = header.get("batch_id")
    if not isinstance(batch_id, str) or not batch_id:
        raise CorruptedBatchError(f"{where} has no batch_id: {batch_id!r:.80}")
    facts = IndexHeader(batch_id, str(header.get("created")), str(header.get("writer")), objects)
    return facts, _rows(data, end + 1, objects, where)


def _rows(data: bytes, position: int, expected: int, where: str) -> Iterator[tuple[IndexEntry, int]]:
    n = 0
    while position < len(data):
        if n == expected:
            raise CorruptedBatchError(f"{where} has more rows than the {expected:,} its header says")
        end = data.find(b"\n", position, position + MAX_INDEX_LINE_BYTES + 1)
        if end < 0:
            raise CorruptedBatchError(
                f"row {n} of {where} has no line end within {MAX_INDEX_LINE_BYTES:,} bytes (the index is "
                "cut short, or the row is longer than the writer ever makes one)"
            )
        row = _json_value(data[position:end], f"row {n} of {where}")
        if not isinstance(row, list) or len(row) != len(INDEX_FIELDS):
            raise CorruptedBatchError(f"{where} has a malformed row {n}: {row!r:.200}")
        entry = IndexEntry(row[0], row[1] if row[1] is not None else row[0], *row[2:])
        check_entry(entry, f"row {n} of {where}")
        yield entry, end - position
        n += 1
        position = end + 1
    if n != expected:
        raise CorruptedBatchError(f"{where} lists {n} rows, its header says {expected!r}")


def _json_value(text: str | bytes, what: str) -> Any:
    """One JSON value from untrusted text; CorruptedBatchError for bad UTF-8, bad JSON or too deep nesting."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CorruptedBatchError(f"{what} is not UTF-8 JSON: {printable(str(exc), max_chars=200)}") from exc


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
        header = parse_header(tail[end - 2 * BLOCK : end - BLOCK], f"byte {start + end - 2 * BLOCK}")
    except CorruptedBatchError as exc:
        raise CorruptedBatchError(f"the block before the trailer is not a tar header ({exc})") from exc
    if header.name != TRAILER_NAME or header.typeflag != REGULAR or header.size != TRAILER_SIZE:
        raise CorruptedBatchError(f"the last member is {quoted(header.name)}, not an s3batch trailer")
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
