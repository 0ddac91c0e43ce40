"""Batches that the writer never makes, built byte by byte for the reader's tests.

``craft`` lays out members the way the writer does (a pax header with the
s3batch facts, the ustar header, the data) and appends a matching index, trailer
and end blocks, so that a test can change exactly one thing and see the reader
refuse that thing, not some other damage it caused.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field

from batcher.index import INDEX_NAME, TRAILER_NAME, IndexEntry, IndexLocation, encode_index, encode_trailer

BLOCK = 512
RECORD = 10240
BATCH_ID = "01JHOSTILE"
CREATED_MS = 1_700_000_000_000
MTIME = CREATED_MS // 1000


def ustar(
    name: bytes | str,
    size: int,
    typeflag: bytes = b"0",
    *,
    magic: bytes = b"ustar\x0000",
    at: dict[int, bytes] | None = None,
) -> bytes:
    """One header block with a correct checksum; ``at`` writes raw bytes at offsets before it is summed."""
    block = bytearray(BLOCK)
    raw = name.encode() if isinstance(name, str) else name
    block[0 : min(len(raw), 100)] = raw[:100]
    block[100:108] = b"0000644\0"
    block[108:124] = b"0000000\0" * 2
    block[124:136] = b"%011o\0" % size if size < 8**11 else bytes(12)
    block[136:148] = b"%011o\0" % MTIME
    block[156:157] = typeflag
    block[257:265] = magic
    for offset, value in (at or {}).items():
        block[offset : offset + len(value)] = value
    block[148:156] = b"        "
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def pax_record(keyword: str, value: str | bytes) -> bytes:
    payload = b" " + keyword.encode() + b"=" + (value.encode() if isinstance(value, str) else value) + b"\n"
    length = len(payload) + 1
    while len(str(length)) + len(payload) != length:
        length = len(str(length)) + len(payload)
    return str(length).encode() + payload


def pad(data: bytes, to: int = BLOCK) -> bytes:
    return data + bytes(-len(data) % to)


def pax_header(records: bytes, typeflag: bytes = b"x") -> bytes:
    return ustar(b"././@PaxHeader", len(records), typeflag) + pad(records)


def facts(key: str, name: str, sha256: str, **extra: object) -> str:
    values: dict[str, object] = {"s3batch": 1, "sha256": sha256, **extra}
    if key != name:
        values["key"] = key
    return json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Member:
    """One member to lay out. By default a regular file with the writer's pax header and facts.

    ``headers`` replaces the header blocks entirely (raw bytes before the data); ``size`` is the size
    the index records (default: len(data)); ``in_index`` leaves the member out of the index.
    """

    name: str
    data: bytes = b""
    key: str | None = None
    headers: bytes | None = None
    extra_pax: bytes = b""
    size: int | None = None
    in_index: bool = True
    facts_extra: dict[str, object] = field(default_factory=dict)

    def header_bytes(self) -> bytes:
        if self.headers is not None:
            return self.headers
        key = self.key if self.key is not None else self.name
        sha256 = hashlib.sha256(self.data).hexdigest()
        records = pax_record("comment", facts(key, self.name, sha256, **self.facts_extra))
        if len(self.name) > 100 or not self.name.isascii():
            records += pax_record("path", self.name)
        return pax_header(records + self.extra_pax) + ustar(self.name.encode("ascii", "replace"), len(self.data))


def craft(
    members: Sequence[Member],
    *,
    index: bytes | None = None,
    end: bytes = bytes(2 * BLOCK),
    trailer: bytes | None = None,
) -> bytes:
    """The tar of ``members``, then an index of them (or ``index``), its trailer and ``end``, padded to a record."""
    out = bytearray()
    entries: list[IndexEntry] = []
    for member in members:
        out += member.header_bytes()
        offset = len(out)
        out += pad(member.data)
        if member.in_index:
            key = member.key if member.key is not None else member.name
            size = member.size if member.size is not None else len(member.data)
            sha = hashlib.sha256(member.data).hexdigest()
            entries.append(IndexEntry(key, member.name, offset, size, sha, None, {}))
    data = index if index is not None else encode_index(BATCH_ID, CREATED_MS, entries)
    return finish(bytes(out), data, trailer=trailer, end=end)


def finish(objects: bytes, index: bytes, *, trailer: bytes | None = None, end: bytes = bytes(2 * BLOCK)) -> bytes:
    """``objects`` (the tar up to its index) followed by ``index``, a trailer that locates it (or ``trailer``),
    ``end`` and zeros to a whole record."""
    out = objects + _member_header(INDEX_NAME, len(index))
    location = IndexLocation(len(out), len(index), hashlib.sha256(index).hexdigest())
    body = trailer if trailer is not None else encode_trailer(location)
    return pad(out + pad(index) + _member_header(TRAILER_NAME, len(body)) + pad(body) + end, RECORD)


def _member_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, MTIME, 0o644
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT)


def gnu_sparse(name: str, claimed: int, stored: bytes = b"x" * BLOCK) -> bytes:
    """The headers of an old-GNU sparse member: ``stored`` bytes of data at the end of ``claimed`` bytes."""
    sparse = b"%011o\0" % (claimed - len(stored)) + b"%011o\0" % len(stored)
    return ustar(name, len(stored), b"S", magic=b"ustar  \0", at={386: sparse, 483: b"%011o\0" % claimed})


def pax_sparse(name: str, claimed: int) -> bytes:
    """The headers of a GNU sparse 1.0 member in pax records (``GNU.sparse.*``), claiming ``claimed`` bytes."""
    records = (
        pax_record("GNU.sparse.major", "1") + pax_record("GNU.sparse.minor", "0")
        + pax_record("GNU.sparse.name", name) + pax_record("GNU.sparse.realsize", str(claimed))
    )  # fmt: skip
    return pax_header(records) + ustar("./GNUSparseFile.0/" + name, BLOCK)
