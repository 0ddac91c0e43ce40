"""Mutated batches fed to every read path: only S3BatchErrors, bounded memory, nothing outside the target.

Each example takes a batch the writer made, applies a few mutations (bit flips,
truncation, spliced hostile headers, edited header fields with or without a
fixed checksum, a crafted index or a lying trailer), puts it into moto's S3
server and runs index, iter_batch, verify, get_many, get, head and extract on
it with a 2 MiB memory limit, under tracemalloc.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from batcher import BatchReader, BatchRef
from batcher.errors import S3BatchError
from batcher.extract import extract_batch
from batcher.index import IndexLocation, encode_index, encode_trailer
from batcher.tarwriter import build_tar
from batcher.uploader import SHA256_METADATA
from tests.hostile import BLOCK, finish, gnu_sparse, pad, pax_header, pax_record, pax_sparse, ustar
from tests.support import Stack
from tests.test_reader import obj

MiB = 1024 * 1024
LIMIT = 2 * MiB
# The limit, plus what a call uses whatever the batch: 1 MiB body reads and their join, HTTP buffers.
PEAK_BOUND = LIMIT + 6 * MiB
BATCH_ID = "01JFUZZ"


@dataclass(frozen=True)
class Base:
    """A batch the writer made: its bytes, S3 metadata, refs' (offset, size, key, sha256), header offsets."""

    data: bytes
    metadata: dict[str, str]
    spans: list[tuple[int, int, str, str]]
    headers: list[int]  # offset of every header block: pax and ustar of each object, index, trailer
    index_offset: int  # of the index member's header


def _base() -> Base:
    objects = [
        obj("plain.txt", b"hello", 0, "text/plain"),
        obj("dir/nested/file.bin", bytes(range(256)) * 12, 1, None, {"owner": "fuzz"}),
        obj("\x1b[31mred\u202e", b"esc", 2),
        obj("dup", b"one", 3),
        obj("dup", b"two", 4),
        obj("a", b"", 5),
        obj("a/b", b"under a", 6),
        obj("k" * 300, b"long key", 7),
    ]
    keys = [o.object_key for o in objects]
    with build_tar(keys, objects, batch_id=BATCH_ID, created_ms=1_700_000_000_000) as tar:
        data = tar.file.read()
        metadata = {**tar.s3_metadata, SHA256_METADATA: tar.sha256}
        spans = [(m.offset, m.size, m.key, m.sha256) for m in tar.members]
        index_offset = tar.index.offset - BLOCK
    headers = []
    for offset, _, _, _ in spans:  # each object's headers: pax block, records, ustar block
        headers += [offset - BLOCK]
        position = offset - 2 * BLOCK
        while data[position + 156 : position + 157] != b"x":
            position -= BLOCK
        headers.append(position)
    headers += [index_offset, len(data.rstrip(b"\0")) // BLOCK * BLOCK - BLOCK]
    return Base(data, metadata, spans, sorted(headers), index_offset)


BASE = _base()

HOSTILE_BLOCKS = [
    gnu_sparse("sparse", 256 * MiB) + b"x" * BLOCK,
    gnu_sparse("sparse", 8 * 1024 * MiB) + b"x" * BLOCK,
    pax_sparse("sparse", 8 * 1024 * MiB) + b"x" * BLOCK,
    ustar("././@LongLink", 600, b"L", magic=b"ustar  \0") + pad(b"L" * 600),
    pax_header(pax_record("path", "../../escape"), b"g"),
    ustar("link", 0, b"2", at={157: b"/etc/passwd"}),
    ustar("hard", 0, b"1", at={157: b"plain.txt"}),
    ustar("dir/", 0, b"5"),
    ustar("huge", 8**11 - 1),
    pax_header(pax_record("size", str(10**15))) + ustar("huge", 0),
    pax_header(b"1" * 160_000),
    pax_header(pax_record("comment", json.dumps({"s3batch": 1, "sha256": "0" * 64})) + pax_record("path", "/abs"))
    + ustar("abs", 0),
    bytes(BLOCK),
]

_SHA = "0" * 64
INDEXES = [
    b"",
    b"\n",
    b"[" * 60_000 + b"\n",
    encode_index(BATCH_ID, 0, []).replace(b'"objects":0', b'"objects":100000000'),
    encode_index(BATCH_ID, 0, []).replace(b'"objects":0', b'"objects":3')
    + b'["k", null, 0, 1000000000000, "%s", null, {}]\n' % _SHA.encode()
    + b'["k2", "../../x", 512, 5, "%s", null, {}]\n' % _SHA.encode()
    + b'["k3", null, 9999999999999999999999, 5, "%s", "a\\r\\nb", {"m": "v"}]\n' % _SHA.encode(),
    encode_index(BATCH_ID, 0, []).replace(b'"objects":0', b'"objects":20000')
    + b"".join(b'["k%d", null, 512, 5, "%s", null, {}]\n' % (n, _SHA.encode()) for n in range(20_000)),
    b'{"s3batch_index": 1, "objects": 0, "fields": ' + json.dumps(["x"] * 7).encode() + b"}\n",
]


@st.composite
def mutations(draw: st.DrawFn) -> Callable[[bytes], bytes]:
    """One mutation of a batch's bytes: bit flips, a truncation, a spliced header, an edited header field."""
    kind = draw(st.sampled_from(["flip", "truncate", "splice", "field"]))
    if kind == "flip":
        flips = draw(st.lists(st.tuples(st.integers(0, len(BASE.data) - 1), st.integers(0, 7)), min_size=1, max_size=4))

        def flip(data: bytes) -> bytes:
            out = bytearray(data)
            for position, bit in flips:
                if position < len(out):
                    out[position] ^= 1 << bit
            return bytes(out)

        return flip
    if kind == "truncate":
        cut = draw(st.integers(0, len(BASE.data) - 1))
        return lambda data: data[:cut]
    if kind == "splice":
        block = draw(st.sampled_from(HOSTILE_BLOCKS))
        at = draw(st.sampled_from(BASE.headers))
        replace = draw(st.booleans())
        return lambda data: data[:at] + block + data[at + (len(block) if replace else 0) :]
    if kind == "field":
        at = draw(st.sampled_from(BASE.headers))
        start, value = draw(
            st.sampled_from(
                [
                    (124, b"%011o\0" % (8**11 - 1)),
                    (124, b"77777777777\0"),
                    (124, b"\x80" + bytes(10) + b"\x01"),
                    (156, b"S"),
                    (156, b"2"),
                    (156, b"5"),
                    (156, b"x"),
                    (156, b"g"),
                    (0, b"../escape\0"),
                    (0, b"../../escape\0"),
                    (0, b"/etc/passwd\0"),
                    (0, b".s3batch/index.jsonl\0"),
                    (257, b"ustar  \0"),
                    (345, b"prefix"),
                ]
            )
        )
        fix_checksum = draw(st.booleans())

        def edit(data: bytes) -> bytes:
            out = bytearray(data)
            out[at + start : at + start + len(value)] = value
            if fix_checksum:
                out[at + 148 : at + 156] = b"        "
                out[at + 148 : at + 156] = b"%06o\0 " % sum(out[at : at + BLOCK])
            return bytes(out)

        return edit
    raise AssertionError(kind)


TRAILERS = [IndexLocation(0, 10**15, _SHA), IndexLocation(512, 100 * MiB, _SHA), IndexLocation(10**19, 5, _SHA)]


@st.composite
def endings(draw: st.DrawFn) -> Callable[[bytes], bytes]:
    """The writer's index and trailer, or a crafted index, or a trailer that lies."""
    choice = draw(st.integers(0, len(INDEXES) + len(TRAILERS)))
    if choice < len(INDEXES):
        index = INDEXES[choice]
        return lambda data: finish(data[: BASE.index_offset], index)
    if choice < len(INDEXES) + len(TRAILERS):
        trailer = encode_trailer(TRAILERS[choice - len(INDEXES)])
        return lambda data: finish(data[: BASE.index_offset], b"{}\n", trailer=trailer)
    return lambda data: data


_examples = itertools.count()


def attempt(what: str, call: Callable[[], Any]) -> Any:
    """What ``call`` returns, or None when it raises an S3BatchError, whose message must be printable."""
    try:
        result = call()
    except S3BatchError as exc:
        assert str(exc).isprintable(), repr(str(exc))
        event(f"{what}: {type(exc).__name__}")  # pytest --hypothesis-show-statistics shows the mix
        return None
    event(f"{what}: ok")
    return result


@settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(ending=endings(), changes=st.lists(mutations(), max_size=3), keep_metadata=st.booleans())
def test_mutated_batches_raise_only_s3batch_errors_in_bounded_memory(
    stack: Stack,
    tmp_path: Path,
    ending: Callable[[bytes], bytes],
    changes: list[Callable[[bytes], bytes]],
    keep_metadata: bool,
) -> None:
    data = ending(BASE.data)
    for change in changes:
        data = change(data)
    n = next(_examples)
    bucket, key = stack.settings.bucket or "", f"fuzz/{n}.tar"
    stack.s3.put_object(Bucket=bucket, Key=key, Body=data, Metadata=BASE.metadata if keep_metadata else {})
    etag = stack.s3.head_object(Bucket=bucket, Key=key)["ETag"]
    base_refs = [BatchRef(bucket, key, o, s, k, BATCH_ID, etag, sha) for o, s, k, sha in BASE.spans]
    reader = BatchReader(stack.s3, max_memory_bytes=LIMIT)
    parent = tmp_path / f"e{n}"
    parent.mkdir()
    tracemalloc.start()
    try:
        index = attempt("index", lambda: reader.index(bucket, key))
        refs = index.refs if index is not None else base_refs
        attempt("iter_batch", lambda: [len(chunk) for _, chunk in reader.iter_batch(bucket, key)])
        check = attempt("verify", lambda: reader.verify(bucket, key))
        event(f"verify: {'intact' if check is not None and check.ok else 'damaged'}")
        attempt("get_many", lambda: reader.get_many(refs))
        attempt("get_many of the writer's refs", lambda: reader.get_many(base_refs, verify=False))
        for ref in refs[:3]:
            attempt("get", functools.partial(reader.get, ref))
            attempt("head", functools.partial(reader.head, ref))
        result = attempt("extract", lambda: extract_batch(reader, bucket, key, parent / "out"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BOUND, peak
    assert [p.name for p in parent.iterdir()] == (["out"] if result is not None else [])
    assert {p.name for p in tmp_path.iterdir()} <= {f"e{i}" for i in range(n + 1)}  # nothing beside the targets
    if result is not None:  # what extract accepted is exactly what the writer wrote
        written = {p.relative_to(parent / "out").as_posix(): p for p in (parent / "out").rglob("*") if p.is_file()}
        assert len(written) == result.objects + 1 and all(not p.is_symlink() for p in written.values())
        for path in written.values():
            assert hashlib.sha256(path.read_bytes()).hexdigest() in {s[3] for s in BASE.spans} or ".s3batch" in str(
                path
            )
