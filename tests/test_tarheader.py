"""The linear header parser: it takes every header the writer makes and nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batcher.errors import CorruptedBatchError
from batcher.index import IndexEntry, entry_from_facts
from batcher.membernames import member_names
from batcher.models import StagedObject
from batcher.tarheader import (
    BLOCK,
    PAX,
    REGULAR,
    check_name,
    member_name,
    member_size,
    padded,
    parse_header,
    parse_pax,
)
from batcher.tarwriter import member_header
from tests.hostile import pax_record, ustar

SHA = "ab" * 32
_TOKEN = st.text(st.sampled_from("abcXYZ019-_.!~"), min_size=1, max_size=8)


def parse_member(header: bytes) -> tuple[str, int, dict[str, str]]:
    """Name, size and pax records of one member's header blocks, as the stream parses them."""
    pax = parse_header(header[:BLOCK], "a test")
    assert pax.typeflag == PAX
    records = parse_pax(header[BLOCK : BLOCK + pax.size], "a test")
    ustar_header = parse_header(header[BLOCK + padded(pax.size) :], "a test")
    assert ustar_header.typeflag == REGULAR and len(header) == 2 * BLOCK + padded(pax.size)
    return member_name(ustar_header, records), member_size(ustar_header, records), records


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=300), min_size=1, max_size=4),
    size=st.one_of(st.integers(0, 4096), st.integers(8**11 - 2, 8**11 + 2), st.just(5 * 2**40)),
    staged_ms=st.one_of(st.integers(0, 2_000_000_000_000), st.just(8**11 * 1000)),
    content_type=st.one_of(st.none(), st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1)),
    metadata=st.dictionaries(_TOKEN, st.text(max_size=300), max_size=3),
)
def test_every_header_the_writer_makes_parses_to_its_facts(
    keys: list[str], size: int, staged_ms: int, content_type: str | None, metadata: dict[str, str]
) -> None:
    for key, name in zip(keys, member_names(keys), strict=True):
        if len(key.encode()) > 1024:
            continue
        sized = StagedObject("r", key, b"", staged_ms, SHA, content_type, metadata, size=size)
        parsed_name, parsed_size, records = parse_member(member_header(sized, name))
        assert (parsed_name, parsed_size) == (name, size)
        entry = entry_from_facts(parsed_name, 1536, parsed_size, records["comment"], "a test")
        assert entry == IndexEntry(key, name, 1536, size, SHA, content_type, metadata)


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (b"0 path=x\n", "malformed record"),
        (b"3 p=x\n", "malformed record"),
        (b"9 path=x", "malformed record"),
        (b"11 path=x\n", "malformed record"),
        (b"x path=x\n", "malformed record"),
        (b"9 pathx\n\n", "malformed record"),
        (b"11 path=\xff\xfe\n", "not UTF-8"),
        (pax_record("p\u00e4th", "x"), "the keyword 'p"),
        (pax_record("GNU.sparse.map", "0,1"), "a GNU sparse file"),
        (pax_record("mtime", "1.5"), "not a number"),
        (pax_record("size", "1" * 21), "not a number"),
    ],
)
def test_malformed_pax_records_are_refused(records: bytes, message: str) -> None:
    with pytest.raises(CorruptedBatchError, match=message):
        parse_pax(records, "a test")


def test_pax_records_parse() -> None:
    records = pax_record("comment", "a=b\nc") + pax_record("path", "ünï/x") + pax_record("size", "12")
    assert parse_pax(records, "a test") == {"comment": "a=b\nc", "path": "ünï/x", "size": "12"}
    assert parse_pax(b"", "a test") == {}


def test_ustar_headers_are_checked_field_by_field() -> None:
    good = ustar("name", 7)
    assert parse_header(good, "a test") == parse_header(good, "x")
    assert (parse_header(good, "x").name, parse_header(good, "x").size) == ("name", 7)
    damaged = bytearray(good)
    damaged[0] ^= 1
    for block, message in [
        (bytes(damaged), "bad checksum"),
        (good[:100], "ends inside a tar header"),
        (ustar("n", 0, b"S", magic=b"ustar  \0"), "a GNU sparse file"),
        (ustar("n", 0, b"?"), "unknown type"),
        (ustar("n", 0, at={345: b"prefix"}), "name prefix"),
        (ustar("n", 0, at={124: b"12345678901x"}), "malformed number"),
        (ustar("n", 0, at={136: b"\x80" + bytes(11)}), "malformed mtime"),
        (ustar(b"\xff\xfe", 0), "not UTF-8"),
    ]:
        with pytest.raises(CorruptedBatchError, match=message):
            parse_header(block, "a test")


@pytest.mark.parametrize(
    "name",
    ["", "/a", "a/", "a//b", ".", "..", "a/../b", "./a", "a\nb", "a\x7fb", "a\x85b", "s" * 256, "a/" + "é" * 128,
     "/".join(["s" * 255] * 17), "a\ud800"],
)  # fmt: skip
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(CorruptedBatchError, match="not a safe relative path"):
        check_name(name, "a test")


@pytest.mark.parametrize("name", ["a", "a/b/c", "...", "a..b", ".hidden", "s" * 255, "é" * 127, "%2E%2E/x", "a\\b"])
def test_safe_names_pass(name: str) -> None:
    check_name(name, "a test")
