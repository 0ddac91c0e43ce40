"""The tar headers that the batch writer makes, parsed in one linear pass; every other header is refused.

Python's ``tarfile`` reads every tar dialect (GNU sparse files, long names,
links, devices, global pax headers), expands sparse members to their claimed
size, and on Python 3.11.7 parses pax headers in quadratic time (CVE-2024-6232).
A batch is a small subset (see batcher.tarwriter): ustar blocks of type ``0``
(a regular file) or ``x`` (a pax header of at most ``PAX_MAX_BYTES``) and pax
records with the keywords in ``PAX_KEYWORDS``. Parsing only that subset lets
a reader refuse anything else from its 512-byte header, before it reads or
allocates a byte of the member's data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from batcher.errors import CorruptedBatchError, InvalidRefError
from batcher.printable import quoted

BLOCK = 512
# A member's headers must fit the 32 KiB that BatchReader.head reads before its data: the pax
# header's ustar block, its records (at most about 24 KiB from the writer) and the member's ustar block.
PAX_MAX_BYTES = 32 * 1024 - 2 * BLOCK
# "path" and "comment" on every object; "size" and "mtime" only when the ustar field overflows.
PAX_KEYWORDS = frozenset({"comment", "path", "size", "mtime"})
MAX_NAME_BYTES = 4096  # the writer's longest: a 1,024-byte key, every byte percent-escaped, and a ~N suffix
MAX_SEGMENT_BYTES = 255
REGULAR, PAX = b"0", b"x"
_MAGIC = b"ustar\x0000"  # POSIX ustar magic and version; GNU tar's "ustar  \0" is another dialect
_ZEROS = bytes(BLOCK)
_OCTAL_DIGITS = b"01234567"
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f-\x9f]|^/|/$|//|(?:^|/)\.\.?(?:/|$)|^$")
_TYPES = {
    b"\0": "an old-style regular file", b"1": "a hard link", b"2": "a symbolic link",
    b"3": "a character device", b"4": "a block device", b"5": "a directory", b"6": "a FIFO",
    b"7": "a contiguous file", b"g": "a global pax header", b"D": "a GNU directory dump",
    b"K": "a GNU long link name", b"L": "a GNU long name", b"M": "a GNU multi-volume continuation",
    b"N": "a GNU old long name", b"S": "a GNU sparse file", b"V": "a GNU volume label",
    b"X": "a Solaris extended header",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Header:
    """One ustar header block: the name field, the size field and the type (REGULAR or PAX)."""

    name: str
    size: int
    typeflag: bytes


def is_end_block(block: bytes) -> bool:
    """True for a block of zeros: the end-of-archive marker."""
    return block == _ZEROS


def parse_header(block: bytes, where: str) -> Header:
    """The header in a 512-byte block; CorruptedBatchError for anything the writer does not write.

    Checked, in order: the checksum, the type (only a regular file or a pax header), the POSIX
    magic, an empty link name and prefix, octal numbers. ``where`` names the block in errors.
    """
    if len(block) != BLOCK:
        raise CorruptedBatchError(f"{where} ends inside a tar header ({len(block)} of {BLOCK} bytes)")
    stored = _octal(block[148:156])
    if stored is None or stored != sum(block) - sum(block[148:156]) + 8 * 32:  # the field counts as spaces
        raise CorruptedBatchError(f"the tar header at {where} has a bad checksum: not a tar header, or damaged")
    typeflag = block[156:157]
    if typeflag not in (REGULAR, PAX):
        kind = _TYPES.get(typeflag, f"a member of unknown type {typeflag!r}")
        raise CorruptedBatchError(f"{where} is {kind}; an s3batch batch holds only regular files and pax headers")
    if block[257:265] != _MAGIC:
        raise CorruptedBatchError(f"the tar header at {where} is not POSIX ustar (magic {block[257:265]!r})")
    if any(block[157:257]) or any(block[345:500]):
        raise CorruptedBatchError(f"the tar header at {where} has a link name or a name prefix")
    size = _octal(block[124:136])
    if size is None or None in (_octal(block[100:108]), _octal(block[108:116]), _octal(block[116:124])):
        raise CorruptedBatchError(f"the tar header at {where} has a malformed number field")
    if _octal(block[136:148]) is None:
        raise CorruptedBatchError(f"the tar header at {where} has a malformed mtime")
    try:
        name = block[:100].split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptedBatchError(f"the tar header at {where} has a name that is not UTF-8") from exc
    return Header(name, size, typeflag)


def parse_pax(records: bytes, where: str) -> dict[str, str]:
    """The keyword -> value pairs of pax records ``"<length> <keyword>=<value>\\n"``, in one pass.

    Refused: a malformed record, a keyword outside PAX_KEYWORDS (GNU.sparse.*, linkpath, hdrcharset...),
    a keyword given twice, a value that is not UTF-8, a size or mtime that is not decimal digits.
    """
    if len(records) > PAX_MAX_BYTES:
        raise CorruptedBatchError(f"the pax header at {where} has {len(records):,} bytes, over {PAX_MAX_BYTES:,}")
    found: dict[str, str] = {}
    position, end = 0, len(records)
    while position < end:
        space = records.find(b" ", position, position + 12)
        digits = records[position:space]
        if space < 0 or not digits.isdigit():
            raise CorruptedBatchError(f"the pax header at {where} has a malformed record at byte {position}")
        record_end = position + int(digits)
        equals = records.find(b"=", space + 1, record_end)
        if record_end > end or equals < 0 or records[record_end - 1 : record_end] != b"\n":
            raise CorruptedBatchError(f"the pax header at {where} has a malformed record at byte {position}")
        keyword = records[space + 1 : equals].decode("ascii", "replace")
        if keyword not in PAX_KEYWORDS:
            kind = "a GNU sparse file" if keyword.startswith("GNU.sparse") else f"the keyword {quoted(keyword)}"
            raise CorruptedBatchError(f"the pax header at {where} describes {kind}, which s3batch never writes")
        if keyword in found:
            raise CorruptedBatchError(f"the pax header at {where} gives {keyword!r} twice")
        try:
            found[keyword] = records[equals + 1 : record_end - 1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptedBatchError(f"the pax record {keyword!r} at {where} is not UTF-8") from exc
        position = record_end
    for keyword in ("size", "mtime"):
        value = found.get(keyword)
        if value is not None and not (value.isascii() and value.isdigit() and len(value) <= 20):
            raise CorruptedBatchError(f"the pax record {keyword!r} at {where} is not a number: {quoted(value)}")
    return found


def member_name(header: Header, pax: dict[str, str]) -> str:
    """The member's name: its pax ``path`` when it has one (long or non-ASCII names), else the ustar name."""
    return pax.get("path", header.name)


def member_size(header: Header, pax: dict[str, str]) -> int:
    """The member's data size in bytes: its pax ``size`` when it has one (8 GiB or more), else the ustar size."""
    return int(pax["size"]) if "size" in pax else header.size


def check_name(name: str, where: str) -> None:
    """Raise CorruptedBatchError unless ``name`` is a safe relative path, as every name the writer makes is.

    Refused: empty, absolute, ``.`` or ``..`` or empty segments, control characters (C0, DEL, C1),
    a segment over 255 UTF-8 bytes, a name over MAX_NAME_BYTES.
    """
    if _UNSAFE_NAME.search(name) is None:
        try:
            size = len(name.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate, which no UTF-8 name decodes to
            size = MAX_NAME_BYTES + 1
        if size <= MAX_SEGMENT_BYTES:
            return
        if size <= MAX_NAME_BYTES and all(
            len(segment.encode("utf-8")) <= MAX_SEGMENT_BYTES for segment in name.split("/")
        ):
            return
    raise CorruptedBatchError(
        f"{where} is named {quoted(name)}, which is not a safe relative path (absolute, '..', an empty "
        f"segment, a control character, or too long); s3batch never writes such a name"
    )


def member_before(window: bytes, where: str) -> tuple[str, int, dict[str, str]]:
    """Name, size and pax records of the member whose headers end ``window``, found by walking back.

    The last block must be a regular file's ustar header (else the ref does not point at a member's
    data); its pax header is the nearest block before it that parses as one and whose records end
    exactly where the ustar header starts. Pax records never hold a NUL byte (names and JSON escape
    control characters), so no block inside them parses as a header.
    """
    ustar = len(window) - BLOCK
    header = _header_or_none(window[ustar:], where)
    if header is None or header.typeflag != REGULAR:
        raise InvalidRefError(f"{where}: the ref's offset is not where a tar member's data starts")
    for position in range(ustar - BLOCK, -1, -BLOCK):
        pax = _header_or_none(window[position : position + BLOCK], where)
        if pax is not None and pax.typeflag == PAX and position + BLOCK + padded(pax.size) == ustar:
            records = parse_pax(window[position + BLOCK : position + BLOCK + pax.size], where)
            return member_name(header, records), member_size(header, records), records
    raise CorruptedBatchError(f"{where}: the member has no s3batch pax header")


def _header_or_none(block: bytes, where: str) -> Header | None:
    try:
        return parse_header(block, where)
    except CorruptedBatchError:
        return None


def padded(size: int) -> int:
    """``size`` rounded up to whole blocks: the bytes a member's data takes in the tar."""
    return -(-size // BLOCK) * BLOCK


def _octal(field: bytes) -> int | None:
    """An octal number field as tar writes it (digits, then NUL or space); None when it is not one."""
    digits = field.rstrip(b"\0 ").lstrip(b" ")
    if not digits or digits.translate(None, _OCTAL_DIGITS):
        return None
    return int(digits, 8)
