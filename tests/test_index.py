"""The batch format's own records: member facts, index, trailer, reserved names, S3 metadata."""

from __future__ import annotations

import io
import json
import random
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from batcher.errors import CorruptedBatchError, MemoryLimitError
from batcher.index import (
    INDEX_NAME,
    METADATA_ITEM_MEMORY_BYTES,
    ROW_MEMORY_BYTES,
    TRAILER_NAME,
    TRAILER_SIZE,
    IndexEntry,
    IndexLocation,
    decode_index,
    decode_trailer,
    encode_index,
    encode_trailer,
    entry_from_facts,
    is_reserved,
    locate_index,
    location_from_metadata,
    member_comment,
    member_entry,
    read_index,
    s3_metadata,
)
from batcher.membernames import member_names, safe_name
from batcher.tarwriter import BuiltTar, build_tar
from tests.test_tarwriter import BATCH_ID, BSDTAR, CREATED_MS, GNU_TAR, files_under, run_tool, staged

SHA = "ab" * 32
ENTRIES = [
    IndexEntry("users/42/avatar.png", "users/42/avatar.png", 1536, 1200, SHA, "image/png", {"owner": "42"}),
    IndexEntry("../x", "%2E%2E/x", 4096, 0, "cd" * 32, None, {}),
    IndexEntry("ünï\ncødé\x85", "ünï%0Acødé%85", 6144, 7, "ef" * 32, None, {"a": "b\u2028\u2029"}),
]


def build(count: int, seed: int = 0) -> tuple[BuiltTar, bytes]:
    rng = random.Random(seed)
    objects = [staged(f"k/{i}", rng.randbytes(rng.choice([0, 1, 700, 5000])), i) for i in range(count)]
    with build_tar([o.object_key for o in objects], objects, batch_id=BATCH_ID, created_ms=CREATED_MS) as tar:
        return tar, tar.file.read()


# ---- the index member ----


def test_index_is_json_lines_with_a_header_and_one_row_per_object() -> None:
    data = encode_index("01JIDX", 1_764_000_000_123, ENTRIES)
    lines = data.decode().splitlines()
    header = json.loads(lines[0])
    assert header == {
        "s3batch_index": 1,
        "batch_id": "01JIDX",
        "objects": 3,
        "created": "2025-11-24T16:00:00.123Z",
        "writer": header["writer"],
        "fields": ["key", "name", "offset", "size", "sha256", "content_type", "metadata"],
    }
    assert header["writer"] == "s3batch format 1"
    assert json.loads(lines[1]) == ["users/42/avatar.png", None, 1536, 1200, SHA, "image/png", {"owner": "42"}]
    assert json.loads(lines[2])[1] == "%2E%2E/x"  # the member name only where it is not the key
    assert len(lines) == 4 and data.endswith(b"\n")


def test_index_decodes_to_refs_and_facts() -> None:
    index = decode_index(encode_index("01JIDX", 0, ENTRIES), bucket="bkt", key="b/1.tar", etag='"e"')
    assert [info.entry() for info in index.objects] == ENTRIES
    assert (index.batch_id, index.created, index.format) == ("01JIDX", "1970-01-01T00:00:00.000Z", 1)
    ref = index.refs[0]
    assert (ref.bucket, ref.key, ref.etag, ref.batch_id, ref.range) == (
        "bkt",
        "b/1.tar",
        '"e"',
        "01JIDX",
        "bytes=1536-2735",
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\n",
        b'{"s3batch_index": 2, "objects": 0, "batch_id": "b"}\n',
        encode_index("b", 0, ENTRIES).replace(b'"objects":3', b'"objects":2'),
        encode_index("b", 0, ENTRIES).replace(b"1536", b"-1536"),
        encode_index("b", 0, ENTRIES).replace(SHA.encode(), b"x" * 64),
        encode_index("b", 0, ENTRIES).rstrip(b"\n"),
        encode_index("", 0, []),
    ],
)
def test_bad_index_is_a_corrupted_batch(data: bytes) -> None:
    with pytest.raises(CorruptedBatchError):
        decode_index(data, bucket="bkt", key="b/1.tar", etag='"e"')


# ---- member facts ----


def test_member_facts_round_trip_through_a_pax_header() -> None:
    for entry in ENTRIES:
        info = tarfile.TarInfo(entry.name)
        info.size = entry.size
        info.pax_headers = {"comment": member_comment(entry)}
        with tarfile.open(fileobj=io.BytesIO(info.tobuf(tarfile.PAX_FORMAT) + bytes(10240))) as archive:
            (read,) = archive.getmembers()
        assert member_entry(read)._replace(offset=entry.offset) == entry
    plain = tarfile.TarInfo("x")
    with pytest.raises(CorruptedBatchError, match="no s3batch facts"):
        member_entry(plain)
    plain.pax_headers = {"comment": '{"s3batch": 1, "sha256": "short"}'}
    with pytest.raises(CorruptedBatchError, match="malformed"):
        member_entry(plain)


# ---- the trailer ----


def test_trailer_is_one_fixed_line() -> None:
    location = IndexLocation(123_456, 789, SHA)
    data = encode_trailer(location)
    assert len(data) == TRAILER_SIZE == 125
    assert data == f"s3batch-trailer 1 {123456:020d} {789:020d} {SHA}\n".encode()
    assert decode_trailer(data) == location
    for bad in (data[:-1], data.replace(b"trailer 1", b"trailer 2"), data.replace(b"789", b"7x9"), b"x" * 125):
        with pytest.raises(CorruptedBatchError):
            decode_trailer(bad)


@pytest.mark.parametrize("count", [0, 1, 7, 60, 400])
def test_trailer_is_found_from_the_end(count: int) -> None:
    tar, data = build(count, seed=count)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        trailer = archive.getmember(TRAILER_NAME)
        index = archive.getmember(INDEX_NAME)
    assert len(data) - trailer.offset <= 12 * 1024  # header, data block, end blocks, record padding
    assert (index.offset_data, index.size) == (tar.index.offset, tar.index.size)
    for tail_bytes in (12 * 1024, 64 * 1024, len(data)):
        tail = data[-tail_bytes:]
        assert locate_index(tail, len(data)) == tar.index
    assert not any(data[trailer.offset_data + TRAILER_SIZE :])  # the trailer is the last non-zero data


def test_trailer_must_be_whole() -> None:
    _, data = build(3)
    with pytest.raises(CorruptedBatchError, match="whole 512-byte blocks"):
        locate_index(data[-4096:] + b"x", len(data) + 1)
    with pytest.raises(CorruptedBatchError, match="no s3batch trailer"):
        locate_index(bytes(4096), 8192)
    damaged = bytearray(data)
    damaged[damaged.rindex(TRAILER_NAME.encode()) + 1] ^= 1  # the trailer's header checksum no longer matches
    with pytest.raises(CorruptedBatchError, match="not a tar header"):
        locate_index(bytes(damaged), len(damaged))


# ---- reserved names ----


@pytest.mark.parametrize("key", [INDEX_NAME, TRAILER_NAME, ".s3batch", ".S3Batch/trailer", ".s3batch/trailer/x"])
def test_no_object_member_is_named_in_the_reserved_directory(key: str) -> None:
    name = safe_name(key)
    assert name == "%2E" + key[1:] and not is_reserved(name)
    assert member_names([key, key]) == [name, f"{name}~1"]
    assert safe_name(name) != name  # and the escaped form, as a key, gets a name of its own


def test_keys_like_the_batch_members_extract_everywhere(tmp_path: Path) -> None:
    keys = [INDEX_NAME, TRAILER_NAME, ".s3batch", ".s3batch/trailer/x", "plain"]
    objects = [staged(key, key.encode(), i) for i, key in enumerate(keys)]
    with build_tar(keys, objects, batch_id=BATCH_ID, created_ms=CREATED_MS) as tar:
        data = tar.file.read()
    path = tmp_path / "reserved.tar"
    path.write_bytes(data)
    results = []
    for tool in (GNU_TAR, BSDTAR):
        out = tmp_path / Path(tool).name
        out.mkdir()
        run_tool(tool, "-xf", path, "-C", out)
        results.append(files_under(out))
    with tarfile.open(path) as archive:
        archive.extractall(tmp_path / "py", filter="data")
    results.append(files_under(tmp_path / "py"))
    assert results[0] == results[1] == results[2]
    files = results[0]
    assert files[INDEX_NAME].startswith(b'{"batch_id":"' + BATCH_ID.encode())
    assert files[TRAILER_NAME].startswith(b"s3batch-trailer 1 ")
    assert {files[m.name] for m in tar.members} == {key.encode() for key in keys}


# ---- S3 metadata ----


def test_s3_metadata_locates_the_index_in_one_head() -> None:
    location = IndexLocation(10_240, 2_000, SHA)
    metadata = s3_metadata("01JMETA", 1_764_000_000_000, 42, location)
    assert metadata == {
        "s3batch-format": "1",
        "s3batch-batch-id": "01JMETA",
        "s3batch-objects": "42",
        "s3batch-created": "2025-11-24T16:00:00.000Z",
        "s3batch-writer": metadata["s3batch-writer"],
        "s3batch-index": f"10240,2000,{SHA}",
    }
    assert all(name == name.lower() for name in metadata)  # S3 gives them back lowercased
    assert sum(len(k) + len(v) for k, v in metadata.items()) < 2048 - 100  # S3's 2 KiB, with s3batch-sha256
    assert location_from_metadata(metadata) == location
    assert location_from_metadata({}) is None
    assert location_from_metadata({"s3batch-index": "1,2,zz"}) is None


# ---- decoding what the writer never writes ----


def _index_with_row(row: str) -> bytes:
    return encode_index("b", 0, ENTRIES[:1]).replace(b'"objects":1', b'"objects":2') + row.encode() + b"\n"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[" * 50_000 + b"\n", "not UTF-8 JSON"),  # nesting deep enough for a RecursionError in json
        (b"[" * 70_000 + b"\n", "not an s3batch index"),  # a header line longer than any the writer makes
        (_index_with_row("[" * 50_000), "not UTF-8 JSON"),
        (encode_index("b", 0, ENTRIES) + b"\n", "more rows than"),
        (_index_with_row('["k", null, 0, 1, "' + SHA + '", null, {}, 1]'), "malformed row 1"),
        (_index_with_row('["k", "../k", 0, 1, "' + SHA + '", null, {}]'), "not a safe relative path"),
        (_index_with_row('["k", "a\\u001b[2J", 0, 1, "' + SHA + '", null, {}]'), "not a safe relative path"),
        (_index_with_row('["\\ud800", "n", 0, 1, "' + SHA + '", null, {}]'), "malformed"),
        (_index_with_row('["' + "k" * 1025 + '", "n", 0, 1, "' + SHA + '", null, {}]'), "malformed"),
        (_index_with_row('["k", null, 0, 1, "' + SHA + '", "a\\r\\nb", {}]'), "malformed"),
        (_index_with_row('["k", null, 0, 1, "' + SHA + '", null, {"bad name": "v"}]'), "malformed"),
        (_index_with_row('["k", null, 0, 1, "' + SHA + '", null, {"m": "' + "v" * 2048 + '"}]'), "malformed"),
        (_index_with_row('["k", null, 0, ' + str(2**63) + ', "' + SHA + '", null, {}]'), "malformed"),
        (_index_with_row('["k", null, 0, true, "' + SHA + '", null, {}]'), "malformed"),
        (_index_with_row('["k", null, 0, 1, "' + SHA + '", null, {"m": "' + "v" * 70_000 + '"}]'), "no line end"),
        (encode_index("b", 0, ENTRIES).replace(b'"objects":3', b'"objects":true'), "no object count"),
        (encode_index("b", 0, ENTRIES).replace(b'"key",', b""), "has fields"),
    ],
)
def test_an_index_the_writer_never_writes_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(CorruptedBatchError, match=message):
        decode_index(data, bucket="bkt", key="b/1.tar", etag='"e"')


def test_rows_are_read_one_at_a_time() -> None:
    header, rows = read_index(encode_index("01JROWS", 5, ENTRIES), "an index")
    assert (header.batch_id, header.objects, header.created) == ("01JROWS", 3, "1970-01-01T00:00:00.005Z")
    assert [entry for entry, _ in rows] == ENTRIES
    _, rows = read_index(encode_index("b", 0, ENTRIES).replace(SHA.encode(), b"x" * 64), "an index")
    with pytest.raises(CorruptedBatchError, match="row 0 of an index has malformed"):
        next(rows)


def test_decoding_stops_at_the_memory_limit() -> None:
    entries = [IndexEntry(f"k/{n}", f"k/{n}", n * 1024, 1, SHA, None, {}) for n in range(10_000)]
    data = encode_index("01JMEM", 0, entries)
    assert len(decode_index(data, bucket="b", key="k", etag="e", max_memory_bytes=16 * 1024 * 1024).objects) == 10_000
    with pytest.raises(MemoryLimitError, match=r"lists 10,000 objects; decoding them takes more than .*\(1,048,576\)"):
        decode_index(data, bucket="b", key="k", etag="e", max_memory_bytes=1024 * 1024)


LONG = "/".join(["k" * 200] * 5)


def test_decoded_rows_cost_no_more_than_the_estimate() -> None:
    """The estimate that decode_index charges per row must stay above what rows really take."""
    cases = {
        "short": [IndexEntry(f"{n}", f"{n}", n, 1, SHA, None, {}) for n in range(5000)],
        "typical": [IndexEntry(f"users/{n}/a.png", f"users/{n}/a.png", n, 9, SHA, "image/png", {"o": "1"})
                    for n in range(5000)],
        "many metadata": [IndexEntry(f"{n}", f"{n}", n, 1, SHA, None, {f"m{i}": "" for i in range(200)})
                          for n in range(500)],
        "long keys": [IndexEntry(LONG + str(n), LONG + str(n), n, 1, SHA, None, {}) for n in range(2000)],
    }  # fmt: skip
    for name, entries in cases.items():
        data = encode_index("01JCOST", 0, entries)
        estimate = len(data) + sum(
            ROW_MEMORY_BYTES + len(line) + METADATA_ITEM_MEMORY_BYTES * len(entry.metadata)
            for entry, line in zip(entries, data.split(b"\n")[1:], strict=False)
        )
        tracemalloc.start()
        try:
            index = decode_index(data, bucket="b", key="k", etag="e")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert len(index.objects) == len(entries)
        assert peak + len(data) < estimate, (name, peak, estimate)


def test_member_facts_must_be_json_the_writer_writes() -> None:
    for comment, message in [
        ("[" * 100_000, "not UTF-8 JSON"),
        ('{"s3batch": 1, "sha256": "' + SHA + '", "key": "' + "k" * 1025 + '"}', "malformed"),
        ('{"s3batch": 1, "sha256": "' + SHA + '", "content_type": "a\\nb"}', "malformed"),
    ]:
        with pytest.raises(CorruptedBatchError, match=message):
            entry_from_facts("name", 512, 1, comment, "a member")
    with pytest.raises(CorruptedBatchError, match="not a safe relative path"):
        entry_from_facts("../name", 512, 1, '{"s3batch": 1, "sha256": "' + SHA + '"}', "a member")


def test_the_trailer_must_be_a_regular_file_of_the_writer() -> None:
    _, data = build(1)
    at = data.rindex(TRAILER_NAME.encode())  # the trailer's header block
    for field, value in ((156, b"2"), (257, b"ustar  \0")):  # a symlink; GNU tar's magic
        damaged = bytearray(data)
        damaged[at + field : at + field + len(value)] = value
        damaged[at + 148 : at + 156] = b"        "
        damaged[at + 148 : at + 156] = b"%06o\0 " % sum(damaged[at : at + 512])
        with pytest.raises(CorruptedBatchError, match="not a tar header"):
            locate_index(bytes(damaged), len(damaged))
