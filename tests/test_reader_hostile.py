"""Hostile batches: the reader refuses what the writer never makes, from its header, in bounded memory."""

from __future__ import annotations

import hashlib
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path

import pytest

from batcher import BatchReader
from batcher.errors import CorruptedBatchError, MemoryLimitError, S3BatchError
from batcher.extract import extract_batch
from batcher.index import encode_index
from batcher.printable import printable
from batcher.tarheader import PAX_MAX_BYTES, parse_pax
from batcher.tarwriter import build_tar
from tests.hostile import (
    BLOCK,
    Member,
    craft,
    gnu_sparse,
    pad,
    pax_header,
    pax_record,
    pax_sparse,
    ustar,
)
from tests.support import Stack
from tests.test_reader import obj

MiB = 1024 * 1024


def put(stack: Stack, key: str, data: bytes) -> tuple[str, str]:
    bucket = stack.settings.bucket or ""
    stack.s3.put_object(Bucket=bucket, Key=key, Body=data)
    return bucket, key


@contextmanager
def peak_memory() -> Iterator[list[int]]:
    """The tracemalloc peak of the block, in bytes, in the yielded list once the block ends."""
    result: list[int] = []
    tracemalloc.start()
    try:
        yield result
    finally:
        result.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def refused_everywhere(stack: Stack, data: bytes, tmp_path: Path, fragment: str) -> None:
    """verify reports ``fragment``; iter_batch and extract raise it; extract leaves nothing behind."""
    bucket, key = put(stack, "h/hostile.tar", data)
    reader = BatchReader(stack.s3)
    check = reader.verify(bucket, key)
    assert not check.ok and fragment in check.problems[-1], check.problems
    with pytest.raises(CorruptedBatchError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        list(reader.iter_batch(bucket, key))
    parent = tmp_path / "extract"
    with pytest.raises(CorruptedBatchError):
        extract_batch(reader, bucket, key, parent / "out")
    assert list(parent.iterdir()) == []  # no target, no temporary directory


def test_a_crafted_batch_like_the_writers_is_intact(stack: Stack, tmp_path: Path) -> None:
    data = craft([Member("a", b"alpha"), Member("d/b", b"b" * 600), Member("ünï/c", b"")])
    bucket, key = put(stack, "h/fine.tar", data)
    reader = BatchReader(stack.s3)
    assert reader.verify(bucket, key).ok
    assert [(i.name, d) for i, d in reader.iter_batch(bucket, key)] == [("a", b"alpha"), ("d/b", b"b" * 600),
                                                                        ("ünï/c", b"")]  # fmt: skip
    result = extract_batch(reader, bucket, key, tmp_path / "out")
    assert (result.objects, result.bytes_written) == (3, 605)


HOSTILE_MEMBERS: dict[str, tuple[list[Member], str]] = {
    "gnu sparse": ([Member("s", b"x" * BLOCK, headers=gnu_sparse("s", 256 * MiB))], "a GNU sparse file"),
    "pax sparse": ([Member("s", b"x" * BLOCK, headers=pax_sparse("s", 256 * MiB))], "a GNU sparse file"),
    "gnu long name": (
        [
            Member(
                "n",
                b"x",
                headers=ustar("././@LongLink", 300, b"L", magic=b"ustar  \0") + pad(b"n" * 300) + ustar("n", 1),
            )
        ],
        "a GNU long name",
    ),
    "global pax": (
        [Member("g", b"", headers=pax_header(pax_record("path", "evil"), b"g") + ustar("g", 0))],
        "a global pax header",
    ),
    "symlink": ([Member("l", b"", headers=ustar("l", 0, b"2", at={157: b"/etc/passwd"}))], "a symbolic link"),
    "hard link": ([Member("l", b"", headers=ustar("l", 0, b"1", at={157: b"a"}))], "a hard link"),
    "device": ([Member("d", b"", headers=ustar("d", 0, b"3"))], "a character device"),
    "directory": ([Member("d/", b"", headers=ustar("d/", 0, b"5"))], "a directory"),
    "fifo": ([Member("f", b"", headers=ustar("f", 0, b"6"))], "a FIFO"),
    "old-style file": ([Member("f", b"", headers=ustar("f", 0, b"\0"))], "an old-style regular file"),
    "gnu magic": ([Member("f", b"", headers=ustar("f", 0, magic=b"ustar  \0"))], "not POSIX ustar"),
    "base-256 size": ([Member("f", b"", headers=ustar("f", 0, at={124: b"\x80" + bytes(11)}))], "malformed number"),
    "no facts": ([Member("f", b"x", headers=ustar("f", 1))], "no s3batch facts"),
    "link name": ([Member("f", b"", headers=ustar("f", 0, at={157: b"x"}))], "link name"),
    "absolute": ([Member("/etc/passwd", b"x")], "not a safe relative path"),
    "dot dot": ([Member("../x", b"x")], "not a safe relative path"),
    "dot": ([Member("a/./x", b"x")], "not a safe relative path"),
    "empty segment": ([Member("a//x", b"x")], "not a safe relative path"),
    "trailing slash": ([Member("a/", b"x")], "not a safe relative path"),
    "escape": ([Member("a\x1b[2Jb", b"x")], "not a safe relative path"),
    "c1 control": ([Member("a\x9bb", b"x")], "not a safe relative path"),
    "long segment": ([Member("s" * 256, b"x")], "not a safe relative path"),
    "long name": ([Member("/".join(["s" * 200] * 21), b"x")], "not a safe relative path"),
    "duplicate": ([Member("dup", b"1"), Member("dup", b"2")], "the name of an earlier member"),
    "file then directory": ([Member("a", b"1"), Member("a/b", b"2")], "needs a directory where an earlier"),
    "directory then file": ([Member("a/b", b"1"), Member("a", b"2")], "is a file where an earlier member needs"),
    "reserved": ([Member(".s3batch/manifest.jsonl", b"1")], "no object is named in .s3batch/"),
    "reserved any case": ([Member(".S3Batch/x", b"1")], "no object is named in .s3batch/"),
    "size unlike index": ([Member("a", b"xy", size=3)], "disagrees with its members at object 1"),
    "missing from index": ([Member("a", b"x"), Member("b", b"y", in_index=False)], "lists 2 objects, the tar has 3"),
    "huge ustar size": (
        [Member("a", b"", headers=pax_header(pax_record("comment", "{}")) + ustar("a", 8**11 - 1))],
        "claims 8,589,934,591 bytes of data; only",
    ),
    "huge pax size": ([Member("a", b"", extra_pax=pax_record("size", str(10**12)))], "claims 1,000,000,000,000"),
    "pax size not a number": ([Member("a", b"", extra_pax=pax_record("size", "12e3"))], "is not a number"),
    "linkpath": ([Member("a", b"", extra_pax=pax_record("linkpath", "/etc/passwd"))], "the keyword 'linkpath'"),
    "hdrcharset": ([Member("a", b"", extra_pax=pax_record("hdrcharset", "BINARY"))], "the keyword 'hdrcharset'"),
    "pax twice": ([Member("a", b"", extra_pax=pax_record("path", "b") + pax_record("path", "c"))], "'path' twice"),
    "pax record length": ([Member("a", b"", extra_pax=b"99999 path=x\n")], "malformed record"),
    "pax after pax": (
        [Member("a", b"", headers=pax_header(b"") + pax_header(b"") + ustar("a", 0))],
        "followed by another pax header",
    ),
    "facts of another format": ([Member("a", b"", facts_extra={"s3batch": 2})], "not s3batch format 1"),
    "content type with CRLF": (
        [Member("a", b"", facts_extra={"content_type": "text/plain\r\nX-Evil: 1"})],
        "malformed s3batch facts",
    ),
    "metadata over 2 KiB": ([Member("a", b"", facts_extra={"metadata": {"m": "v" * 2048}})], "malformed s3batch facts"),
    "key over 1 KiB": ([Member("a", b"", key="k" * 1025)], "malformed s3batch facts"),
}


@pytest.mark.parametrize("case", HOSTILE_MEMBERS)
def test_what_the_writer_never_makes_is_refused(stack: Stack, tmp_path: Path, case: str) -> None:
    members, fragment = HOSTILE_MEMBERS[case]
    refused_everywhere(stack, craft([Member("first", b"fine"), *members]), tmp_path, fragment)


def test_a_member_after_the_trailer_is_refused(stack: Stack, tmp_path: Path) -> None:
    data = craft([Member("a", b"1")], end=ustar("late", 0) + bytes(2 * BLOCK))
    refused_everywhere(stack, data, tmp_path, "the trailer must be the last member")


def test_an_object_named_like_the_index_is_refused(stack: Stack, tmp_path: Path) -> None:
    refused_everywhere(stack, craft([Member(".s3batch/index.jsonl", b"x")]), tmp_path, "comes after the index")


def test_a_batch_needs_two_end_blocks(stack: Stack, tmp_path: Path) -> None:
    whole = craft([Member("a", b"1")]).rstrip(b"\0")
    refused_everywhere(stack, pad(whole) + bytes(BLOCK), tmp_path, "second end-of-archive block")
    refused_everywhere(stack, pad(whole), tmp_path, "it is cut short")


def test_data_after_the_end_blocks_is_reported(stack: Stack) -> None:
    bucket, key = put(stack, "h/junk.tar", craft([Member("a", b"1")], end=bytes(1024) + b"junk".ljust(BLOCK, b"\0")))
    check = BatchReader(stack.s3).verify(bucket, key)
    assert not check.ok and "after its end-of-archive blocks" in check.problems[0]


@pytest.mark.parametrize("claimed", [256 * MiB, 8 * 1024 * MiB])
def test_sparse_claims_allocate_nothing(stack: Stack, tmp_path: Path, claimed: int) -> None:
    """A 10 KiB object whose GNU sparse member claims 256 MiB or 8 GiB (tarfile would materialise it)."""
    for n, headers in enumerate((gnu_sparse("s", claimed), pax_sparse("s", claimed))):
        data = pad(headers + b"x" * BLOCK + bytes(1024), 10240)
        assert len(data) == 10240
        bucket, key = put(stack, f"h/sparse{n}.tar", data)
        reader = BatchReader(stack.s3)
        started = time.perf_counter()
        with peak_memory() as peak:
            assert "GNU sparse file" in reader.verify(bucket, key).problems[0]
            with pytest.raises(CorruptedBatchError, match="GNU sparse file"):
                list(reader.iter_batch(bucket, key))
            with pytest.raises(CorruptedBatchError, match="GNU sparse file"):
                extract_batch(reader, bucket, key, tmp_path / f"out{n}")
        assert peak[0] < 2 * MiB and time.perf_counter() - started < 2


def test_a_crafted_160_kb_pax_header_is_refused_at_once(stack: Stack) -> None:
    """tarfile on Python 3.11.7 needs about 15 s for this header (CVE-2024-6232); the reader refuses its size."""
    records = b"1" * 160_000
    bucket, key = put(stack, "h/pax.tar", pad(pax_header(records) + ustar("f", 0) + bytes(1024), 10240))
    started = time.perf_counter()
    check = BatchReader(stack.s3).verify(bucket, key)
    assert time.perf_counter() - started < 0.5
    assert "has 160,000 bytes; the writer's have at most" in check.problems[0]


@pytest.mark.parametrize(
    "records",
    [
        b"1" * PAX_MAX_BYTES,  # the quadratic case of tarfile's hdrcharset search
        b"9" * 11 + b" " + b"=" * (PAX_MAX_BYTES - 12),
        pax_record("comment", "1=" * ((PAX_MAX_BYTES - 20) // 2)),
        b"5 a=\n" * (PAX_MAX_BYTES // 5),
        (pax_record("path", "p") + b"1 " * (PAX_MAX_BYTES // 2))[:PAX_MAX_BYTES],
    ],
)
def test_pax_parsing_is_linear_on_the_largest_headers_it_takes(records: bytes) -> None:
    started = time.perf_counter()
    with suppress(CorruptedBatchError):
        parse_pax(records, "a test")
    assert time.perf_counter() - started < 0.05


def test_error_messages_escape_what_the_batch_says(stack: Stack, tmp_path: Path) -> None:
    """Keys may hold any character; messages about them must not move a terminal's cursor or text."""
    key = "\x1b[2J\x1b]0;title\x07\u202eevil\u2028\x9b31m"
    objs = [obj(key, b"payload", 0, "text/plain", {"m": "\x1b[31m"}), obj("plain", b"x", 1)]
    bucket = stack.settings.bucket or ""
    with build_tar([o.object_key for o in objs], objs, batch_id="01JESC", created_ms=1_700_000_000_000) as tar:
        data = bytearray(tar.file.read())
        members = tar.members
    data[members[0].offset] ^= 1  # the escaped key's object is damaged
    stack.s3.put_object(Bucket=bucket, Key="h/esc\x1b.tar", Body=bytes(data))
    reader = BatchReader(stack.s3)
    index = reader.index(bucket, "h/esc\x1b.tar")
    assert index.objects[0].ref.object_key == key  # the library gives the exact key ...
    assert printable(key).isprintable() and "\x1b" not in printable(key)  # ... and the means to show it
    messages = [*reader.verify(bucket, "h/esc\x1b.tar").problems]
    for call in (
        lambda: list(reader.iter_batch(bucket, "h/esc\x1b.tar")),
        lambda: reader.get(index.refs[0]),
        lambda: reader.get_many(index.refs),
        lambda: extract_batch(reader, bucket, "h/esc\x1b.tar", tmp_path / "out"),
        lambda: reader.get(replace(index.refs[0], size=10**6)),
    ):
        with pytest.raises(S3BatchError) as caught:
            call()
        messages.append(str(caught.value))
    assert all(message.isprintable() for message in messages), messages
    assert all("\\x1b" in message for message in messages)  # the key, or the tar's key, escaped


def test_a_crafted_32_mib_index_stays_within_the_limit(stack: Stack) -> None:
    """370,000 tiny rows decode to about 300 MB of objects; the reader stops at its limit instead."""
    sha = hashlib.sha256(b"").hexdigest()
    rows = b"".join(b'["k%d",null,0,0,"%s",null,{}]\n' % (n, sha.encode()) for n in range(370_000))
    header = encode_index("01JBIG", 0, [])
    index = header.replace(b'"objects":0', b'"objects":370000') + rows
    assert len(index) > 32 * MiB
    bucket, key = put(stack, "h/bigindex.tar", craft([], index=index))
    reader = BatchReader(stack.s3)  # the default limit, 64 MiB
    with peak_memory() as peak, pytest.raises(MemoryLimitError, match="raise max_memory_bytes"):
        reader.index(bucket, key)
    assert peak[0] < reader.max_memory_bytes + 16 * MiB
    with pytest.raises(MemoryLimitError, match="over the reader's max_memory_bytes"):
        BatchReader(stack.s3, max_memory_bytes=16 * MiB).index(bucket, key)  # refused before the second GET
    with pytest.raises(MemoryLimitError):
        BatchReader(stack.s3, max_memory_bytes=16 * MiB).verify(bucket, key)
