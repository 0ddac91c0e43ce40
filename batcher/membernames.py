"""Safe tar member names for any S3 key (guarantee 2).

A member name never escapes the extraction directory and always extracts on an
ordinary file system; where it differs from the key, the exact key travels in
the member's pax header. The escaping is injective, so distinct keys give
distinct names; the batch pass then settles names that one member would need
as a file and another as a directory. The top-level directory ``.s3batch`` is
reserved for the batch's own members (its index and trailer): no object member
is ever named inside it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

MAX_SEGMENT_BYTES = 255
_EMPTY_SEGMENT = "%"  # a literal '%' is always escaped as %25, so a lone '%' can only mean "empty"
_SPECIAL_SEGMENTS = {".": "%2E", "..": "%2E%2E"}
_TRUNCATED_BYTES = 200
RESERVED_DIR = ".s3batch"


def safe_segment(segment: str) -> str:
    """One path segment made safe: '%' and control characters percent-escaped, bounded in length."""
    if segment == "":
        return _EMPTY_SEGMENT
    if segment in _SPECIAL_SEGMENTS:
        return _SPECIAL_SEGMENTS[segment]
    escaped = "".join(
        f"%{ord(ch):02X}" if ch == "%" or ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 else ch for ch in segment
    )
    if len(escaped.encode("utf-8")) <= MAX_SEGMENT_BYTES:
        return escaped
    # Keep a readable head and make it unique with a digest of the whole segment. "%~" never
    # occurs in an escaped literal segment (every literal '%' becomes %25), so this stays injective.
    return f"{_truncate(escaped, _TRUNCATED_BYTES)}%~{hashlib.sha256(segment.encode('utf-8')).hexdigest()[:32]}"


def _truncate(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` that is at most ``max_bytes`` UTF-8 bytes."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def _with_suffix(name: str, suffix: str) -> str:
    """``name`` plus ``suffix``, shortening the last segment so that it stays within 255 bytes."""
    head, _, last = name.rpartition("/")
    last = _truncate(last, MAX_SEGMENT_BYTES - len(suffix.encode("utf-8"))) + suffix
    return f"{head}/{last}" if head else last


def safe_name(key: str) -> str:
    """The member name for one key, as readable as the key allows, never inside RESERVED_DIR."""
    segments = [safe_segment(segment) for segment in key.split("/")]
    # Any case, for case-insensitive file systems. "%2E" starts no other escaped segment, so this stays injective.
    if segments[0].casefold() == RESERVED_DIR:
        segments[0] = "%2E" + segments[0][1:]
    return "/".join(segments)


def member_names(keys: Iterable[str]) -> list[str]:
    """Member names for a batch's keys, in order: safe, unique, and no file doubling as a directory."""
    names = [safe_name(key) for key in keys]
    directories = {name[:i] for name in names for i, ch in enumerate(name) if ch == "/"}
    taken: set[str] = set()
    result = []
    for name in names:
        candidate, n = name, 0
        while candidate in taken or candidate in directories:
            n += 1
            candidate = _with_suffix(name, f"~{n}")
        taken.add(candidate)
        result.append(candidate)
    return result
