"""Member names: safe, unique, extractable paths for any valid S3 key (guarantee 2)."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from batcher.membernames import MAX_SEGMENT_BYTES, member_names, safe_name, safe_segment

MAX_KEY_BYTES = 1024

# No database: the tests must not leave a .hypothesis directory in the work tree.
PROPERTY = settings(database=None, deadline=None, max_examples=200)

TRICKY_PIECES = [
    "/", "//", ".", "..", "%", "%2E", "%25", "~", "~1",
    "\n", "\r", "\t", "\x00", "\x1f", "\x7f", "\x85", "\x9f",
    " ", "  ", "é", "日本語", "😀", "\u2028", "\ufeff", "a", "b", "users", "avatar.png",
]  # fmt: skip


def _utf8_prefix(text: str, limit: int) -> str:
    """The longest prefix of ``text`` that is at most ``limit`` UTF-8 bytes."""
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


_any_char = st.characters(codec="utf-8")  # every code point but surrogates
_piece = st.one_of(
    st.sampled_from(TRICKY_PIECES),
    st.text(_any_char, min_size=1, max_size=8),
    st.text(st.sampled_from("ab.%~é日"), min_size=200, max_size=400),  # long segments, escaped or truncated
    st.integers(250, 256).map(lambda n: "s" * n),  # segments right at the 255-byte limit
)
s3_keys = (
    st.lists(_piece, min_size=1, max_size=30)
    .map(lambda pieces: _utf8_prefix("".join(pieces), MAX_KEY_BYTES))
    .filter(lambda key: key != "")
)
# Batches draw from a small pool so that duplicates and file/directory clashes are common.
batches = st.lists(s3_keys, min_size=1, max_size=8).flatmap(
    lambda pool: st.lists(
        st.one_of(st.sampled_from(pool), st.sampled_from(pool).map(lambda key: key + "/" + "x")), max_size=20
    )
)


def assert_safe_path(name: str) -> None:
    """Fail unless ``name`` is a relative path that extracts on an ordinary POSIX file system."""
    assert not name.startswith("/"), name
    for segment in name.split("/"):
        assert segment not in ("", ".", ".."), (name, segment)
        assert len(segment.encode("utf-8")) <= MAX_SEGMENT_BYTES, (name, len(segment.encode("utf-8")))
        controls = [ch for ch in segment if ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F]
        assert not controls, (name, controls)


def directory_prefixes(name: str) -> set[str]:
    return {name[:i] for i, ch in enumerate(name) if ch == "/"}


# ---- single keys ----


@pytest.mark.parametrize(
    "key",
    [
        "users/42/avatar.png",
        "a",
        "dir/file.txt",
        "日本語/ファイル.txt",
        "with space/and-dash_underscore~tilde",
    ],
)
def test_plain_keys_are_kept_as_is(key: str) -> None:
    assert safe_name(key) == key
    assert member_names([key]) == [key]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("/abs/path", "%/abs/path"),
        ("a//b", "a/%/b"),
        ("dir/", "dir/%"),
        ("../../etc/passwd", "%2E%2E/%2E%2E/etc/passwd"),
        ("./x", "%2E/x"),
        ("100%", "100%25"),
        ("line\nbreak", "line%0Abreak"),
        ("del\x7f", "del%7F"),
        ("c1\x85", "c1%85"),
    ],
)
def test_unsafe_keys_are_escaped_readably(key: str, expected: str) -> None:
    assert safe_name(key) == expected


def test_long_segment_is_truncated_with_a_digest() -> None:
    segment = "s" * 1000
    safe = safe_segment(segment)
    assert len(safe.encode("utf-8")) <= MAX_SEGMENT_BYTES
    assert safe.startswith("s" * 100)
    assert safe != safe_segment("s" * 999)


@given(s3_keys)
@PROPERTY
@example("/")
@example("." * 1024)
@example("/" * 1024)
@example("\x00" * 1024)
@example("é" * 512)
@example("%" * 1024)
def test_safe_name_is_a_safe_path(key: str) -> None:
    assert 1 <= len(key.encode("utf-8")) <= MAX_KEY_BYTES
    assert_safe_path(safe_name(key))


@given(s3_keys, s3_keys)
@PROPERTY
@example("", "%")  # empty segment vs a literal percent sign (as segments)
@example(".", "%2E")
@example("a/", "a/%")
@example("\n", "%0A")
def test_safe_name_is_injective(key1: str, key2: str) -> None:
    if key1 != key2:
        assert safe_name(key1) != safe_name(key2)


def test_truncated_segment_does_not_collide_with_a_literal_key() -> None:
    """A long segment's truncated form is itself a valid short key; the two must not share a name."""
    long_key = "a" * 300
    literal_key = safe_name(long_key)  # 'aaa...a~<32 hex digits>', 233 bytes, itself a plain key
    assert literal_key != long_key
    assert safe_name(literal_key) != safe_name(long_key)


# ---- batches ----


@given(batches)
@PROPERTY
@example(["a", "a/b"])
@example(["a/b", "a"])
@example(["a", "a", "a~1"])
@example(["x", "x", "x~1/y"])
@example(["s" * 255, "s" * 255])
def test_batch_names_are_safe_unique_and_never_both_file_and_directory(keys: list[str]) -> None:
    names = member_names(keys)
    assert len(names) == len(keys)
    assert len(set(names)) == len(names)
    directories = set().union(*(directory_prefixes(name) for name in names))
    assert not directories & set(names)
    for name in names:
        assert_safe_path(name)


@given(st.lists(s3_keys, max_size=20, unique=True))
@PROPERTY
def test_batch_without_clashes_keeps_every_safe_name(keys: list[str]) -> None:
    safe = [safe_name(key) for key in keys]
    directories = set().union(*(directory_prefixes(name) for name in safe))
    if directories & set(safe):
        return  # a file/directory clash must be settled by renaming
    assert member_names(keys) == safe


def test_batch_keeps_plain_keys_and_order() -> None:
    keys = ["users/42/avatar.png", "users/43/avatar.png", "readme.txt"]
    assert member_names(keys) == keys


def test_duplicates_and_file_directory_clash_are_renamed() -> None:
    assert member_names(["a", "a", "a/b"]) == ["a~1", "a~2", "a/b"]


def test_empty_batch() -> None:
    assert member_names([]) == []


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param(["s" * 255, "s" * 255], id="duplicate-255-byte-key"),
        pytest.param(["s" * 255, "s" * 255 + "/child"], id="255-byte-file-and-directory"),
        pytest.param(["d/" + "é" * 127 + "x", "d/" + "é" * 127 + "x"], id="duplicate-255-byte-last-segment"),
    ],
)
def test_renamed_member_keeps_segments_within_255_bytes(keys: list[str]) -> None:
    for name in member_names(keys):
        assert_safe_path(name)
