"""One whole batch read as a stream: its objects in tar order with their data in chunks, then checks.

Headers are parsed by batcher.tarheader (the writer's subset only, in linear
time) as the GET response arrives, so a member the writer never makes is
refused from its header, before its data is read, and a size that runs past
the end of the object is refused before anything is allocated for it. Each
member's data is handed out in chunks of at most CHUNK_BYTES. What must be
remembered until the index arrives at the end is small and counted against
the reader's ``max_memory_bytes``: a 16-byte digest of each member's facts (to
compare with the index row by row) and of each member name and directory (to
refuse duplicate names and a file that another member needs as a directory).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError

from batcher import checksums
from batcher.checksums import Checksum, Stored
from batcher.errors import ChecksumMismatchError, CorruptedBatchError, InvalidRefError, MemoryLimitError, ReadError
from batcher.index import (
    FORMAT_VERSION,
    INDEX_NAME,
    META_BATCH_ID,
    META_FORMAT,
    TRAILER_NAME,
    TRAILER_SIZE,
    IndexEntry,
    IndexLocation,
    ObjectInfo,
    decode_trailer,
    entry_from_facts,
    location_from_metadata,
    read_index,
)
from batcher.membernames import RESERVED_DIR
from batcher.models import BatchRef
from batcher.printable import printable, quoted
from batcher.tarheader import (
    BLOCK,
    PAX,
    PAX_MAX_BYTES,
    REGULAR,
    is_end_block,
    member_name,
    member_size,
    padded,
    parse_header,
    parse_pax,
)
from batcher.uploader import SHA256_METADATA

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import GetObjectOutputTypeDef

CHUNK_BYTES = 1024 * 1024
DEFAULT_MAX_MEMORY_BYTES = 64 * 1024 * 1024
# What remembering one digest costs: the 16-byte bytes object and its slot in a set (measured: ~90 bytes).
_DIGEST_MEMORY_BYTES = 100
_DIGEST_BYTES = 16

Progress = Callable[[int, int], None]
"""Called with (bytes read so far, total bytes) while a whole batch streams."""


class MemberData:
    """The data of the member just yielded: read it (once, in chunks) before asking for the next member.

    What is not read when the stream moves on is skipped. ``hexdigest`` is the SHA-256 of the data,
    once all of it was read.
    """

    def __init__(self, stream: BatchStream, size: int) -> None:
        self.size = size
        self._stream = stream
        self._left = size
        self._sha256 = hashlib.sha256()

    def chunks(self) -> Iterator[bytes]:
        """The data in chunks of at most CHUNK_BYTES; raises CorruptedBatchError or ReadError as the stream does.

        RuntimeError once the stream has moved on to the next member (the data was skipped).
        """
        if self._left < 0:
            raise RuntimeError("the member's data was skipped: read it before asking the stream for the next member")
        while self._left > 0:
            chunk = self._stream._chunk(self._left)
            self._left -= len(chunk)
            self._sha256.update(chunk)
            yield chunk

    def read(self) -> bytes:
        """All of the data at once: holds it, and briefly twice, while its chunks are joined."""
        return b"".join(self.chunks())

    def hexdigest(self) -> str:
        """The SHA-256 of the data; RuntimeError unless all of it was read."""
        if self._left != 0:
            raise RuntimeError("the member's data was not read to its end, so it has no digest")
        return self._sha256.hexdigest()

    def _skip_rest(self) -> None:
        if self._left > 0:
            self._stream._skip(self._left)
            self._left = -1  # skipped: no data, no digest


class BatchStream:
    """The objects of one whole-tar GET response in tar order; at the end, checks of the index and trailer.

    Iterating gives (ObjectInfo, MemberData) for each object; the iteration ends by checking the
    index, the trailer and the end-of-archive blocks (CorruptedBatchError), after reading the whole
    object. ``check_tar_digest`` then checks the tar's SHA-256 and that only zeros follow the end.
    ``max_memory_bytes`` bounds what the stream remembers between members plus the index it holds
    at the end (MemoryLimitError beyond it); the data it reads is never kept.
    """

    def __init__(
        self,
        response: GetObjectOutputTypeDef,
        bucket: str,
        key: str,
        progress: Progress | None,
        *,
        max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    ) -> None:
        self.response, self.bucket, self.key, self.progress = response, bucket, key, progress
        self.max_memory_bytes = max_memory_bytes
        self.where = f"s3://{printable(bucket)}/{printable(key)}"
        self.digest = hashlib.sha256()
        self.bytes_read = 0
        self.total = int(response.get("ContentLength", 0))
        self.metadata: dict[str, str] = dict(response.get("Metadata", {}))
        self.checksum = _running_checksum(self.metadata)  # the S3 checksum the batch was uploaded with
        self.position = 0  # bytes of the tar consumed by the parser (bytes_read is what arrived)
        self._body: Any = response["Body"]
        self._buffer = b""
        self._start = 0  # first unconsumed byte of _buffer
        self._names: set[bytes] = set()
        self._directories: set[bytes] = set()
        self._facts = bytearray()  # one digest of each object's facts, in tar order
        self._held = 0
        self._trailing_nonzero: int | None = None

    def __iter__(self) -> Iterator[tuple[ObjectInfo, MemberData]]:
        try:
            with self._body:
                yield from self._members()
        except BotoCoreError as exc:
            raise ReadError(f"could not read {self.where}: {printable(str(exc), max_chars=300)}") from exc

    def check_tar_digest(self) -> None:
        """Raise ChecksumMismatchError unless the streamed tar has the SHA-256 and the S3 checksum stored at
        upload (and the server's own record of that checksum agrees), and CorruptedBatchError when anything
        but zeros followed the end-of-archive blocks."""
        expected = self.metadata.get(SHA256_METADATA)
        if expected is not None and self.digest.hexdigest() != expected:
            raise ChecksumMismatchError(
                f"{self.where} has sha256 {self.digest.hexdigest()}, uploaded as {printable(expected, max_chars=80)}"
            )
        stored = Stored.decode(self.metadata.get(checksums.METADATA))
        if stored is not None and self.checksum is not None:
            ours = self.checksum.value
            server = self.response.get(f"Checksum{stored.algorithm}")
            if ours != stored.value:
                raise ChecksumMismatchError(
                    f"{self.where} has {stored.algorithm} {ours}, uploaded as {printable(stored.value, max_chars=80)}"
                )
            if isinstance(server, str) and "-" not in server and server != ours:  # "-N": a composite of parts
                raise ChecksumMismatchError(
                    f"S3 keeps {stored.algorithm} {server} for {self.where}, its bytes have {ours}"
                )
        if self._trailing_nonzero is not None:
            raise CorruptedBatchError(
                f"{self.where} has data at byte {self._trailing_nonzero:,}, after its end-of-archive blocks; "
                "s3batch writes only zeros there"
            )

    # ---- the members ----

    def _members(self) -> Iterator[tuple[ObjectInfo, MemberData]]:
        self._check_metadata()
        etag = str(self.response.get("ETag", ""))
        batch_id = self.metadata.get(META_BATCH_ID) or PurePosixPath(self.key).stem
        index: tuple[int, bytes] | None = None
        trailer: IndexLocation | None = None
        objects = 0
        while True:
            start = self.position
            block = self._take(BLOCK, objects)
            if is_end_block(block):
                break
            at = f"byte {start:,} of {self.where}"
            header = parse_header(block, at)
            pax: dict[str, str] = {}
            if header.typeflag == PAX:
                if header.size > PAX_MAX_BYTES:
                    raise CorruptedBatchError(
                        f"the pax header at {at} has {header.size:,} bytes; the writer's have at most {PAX_MAX_BYTES:,}"
                    )
                pax = parse_pax(self._take(padded(header.size), objects)[: header.size], at)
                header = parse_header(self._take(BLOCK, objects), f"byte {self.position - BLOCK:,} of {self.where}")
                if header.typeflag != REGULAR:
                    raise CorruptedBatchError(f"the pax header at {at} is followed by another pax header")
            name, size, offset = member_name(header, pax), member_size(header, pax), self.position
            member = f"member {quoted(name)} at {at}"
            if size > self.total - offset:
                raise CorruptedBatchError(
                    f"{member} claims {size:,} bytes of data; only {self.total - offset:,} remain in the object"
                )
            if trailer is not None:
                raise CorruptedBatchError(f"unexpected {member}: the trailer must be the last member")
            if name == INDEX_NAME and index is None:
                self._charge(size, f"the index member of {self.where} ({size:,} bytes)")
                index = (offset, self._read(size))
            elif name == TRAILER_NAME and index is not None:
                if size != TRAILER_SIZE:
                    raise CorruptedBatchError(f"the trailer of {self.where} has {size} bytes, not {TRAILER_SIZE}")
                trailer = decode_trailer(self._read(size))
            elif index is not None or name.split("/", 1)[0].casefold() == RESERVED_DIR:
                raise CorruptedBatchError(
                    f"unexpected {member}: no object is named in {RESERVED_DIR}/ or comes after the index"
                )
            else:
                entry = entry_from_facts(name, offset, size, pax.get("comment"), member)
                self._remember(entry, member)
                data = MemberData(self, size)
                yield ObjectInfo(_ref(self.bucket, self.key, batch_id, etag, entry, member), name,
                                 entry.content_type, entry.metadata), data  # fmt: skip
                data._skip_rest()
                objects += 1
            self._skip(padded(size) - size)
        after = self._drain()
        self._check_index(objects, index, trailer)
        if after < BLOCK:
            raise CorruptedBatchError(f"{self.where} ends without its second end-of-archive block: it is cut short")

    def _check_metadata(self) -> None:
        """Refuse from the response's headers a batch of another format or with an index past the limit."""
        version = self.metadata.get(META_FORMAT)
        if version is not None and version != str(FORMAT_VERSION):
            raise CorruptedBatchError(
                f"{self.where} is s3batch format {printable(version, max_chars=20)}; this reader knows {FORMAT_VERSION}"
            )
        location = location_from_metadata(self.metadata)
        if location is not None:
            self._charge(location.size, f"the index of {self.where} ({location.size:,} bytes, says its metadata)", 0)

    def _remember(self, entry: IndexEntry, member: str) -> None:
        """Keep digests of the member's facts, name and directories; refuse a name that another member has."""
        segments = entry.name.split("/")
        path = hashlib.blake2b(digest_size=_DIGEST_BYTES)
        new: list[bytes] = []
        for segment in segments[:-1]:
            path.update(segment.encode("utf-8"))
            directory = path.digest()  # "a/b" as a directory has the digest of "a/b" as a file
            if directory in self._names:
                raise CorruptedBatchError(f"{member} needs a directory where an earlier member is a file")
            if directory not in self._directories:
                new.append(directory)
            path.update(b"/")
        path.update(segments[-1].encode("utf-8"))
        name = path.digest()
        if name in self._names:
            raise CorruptedBatchError(f"{member} has the name of an earlier member; s3batch never repeats a name")
        if name in self._directories:
            raise CorruptedBatchError(f"{member} is a file where an earlier member needs a directory")
        self._charge(_DIGEST_BYTES + _DIGEST_MEMORY_BYTES * (1 + len(new)), f"the names of {self.where}")
        self._held += _DIGEST_BYTES + _DIGEST_MEMORY_BYTES * (1 + len(new))
        self._names.add(name)
        self._directories.update(new)
        self._facts += _facts_digest(entry)

    def _charge(self, size: int, what: str, held: int | None = None) -> None:
        """MemoryLimitError when holding ``size`` more bytes would pass max_memory_bytes."""
        held = self._held if held is None else held
        if held + size > self.max_memory_bytes:
            raise MemoryLimitError(
                f"reading {what} would hold {held + size:,} bytes, over the reader's max_memory_bytes "
                f"({self.max_memory_bytes:,}): raise max_memory_bytes to read this batch"
            )

    def _check_index(self, objects: int, index: tuple[int, bytes] | None, trailer: IndexLocation | None) -> None:
        if index is None or trailer is None:
            raise CorruptedBatchError(
                f"{self.where} ends after {objects} objects without its index and trailer "
                "(a damaged header ends what tar tools can read)"
            )
        location = IndexLocation(index[0], len(index[1]), hashlib.sha256(index[1]).hexdigest())
        if trailer != location:
            raise CorruptedBatchError(f"the trailer of {self.where} says {trailer}, the index member is {location}")
        if location_from_metadata(self.metadata) not in (None, location):
            raise CorruptedBatchError(f"the S3 metadata of {self.where} locates another index than its trailer")
        _, rows = read_index(index[1], f"the index of {self.where}")
        n = -1
        for n, (row, _) in enumerate(rows):
            if n >= objects or self._facts[n * _DIGEST_BYTES : (n + 1) * _DIGEST_BYTES] != _facts_digest(row):
                raise CorruptedBatchError(
                    f"the index of {self.where} disagrees with its members at object {n}: index row {row!r:.300}"
                )
        if n + 1 != objects:
            raise CorruptedBatchError(f"the index of {self.where} lists {n + 1} objects, the tar has {objects}")

    # ---- bytes from the response body ----

    def _read_body(self, size: int) -> bytes:
        data: bytes = self._body.read(size)
        self.digest.update(data)
        if self.checksum is not None:
            self.checksum.update(data)
        self.bytes_read += len(data)
        if self.progress is not None and data:
            self.progress(self.bytes_read, self.total)
        return data

    def _take(self, size: int, objects: int) -> bytes:
        """Exactly ``size`` bytes of headers (small): from the buffer, refilled CHUNK_BYTES at a time."""
        start = self._start
        if len(self._buffer) - start < size:
            parts, have = [self._buffer[start:]], len(self._buffer) - start
            while have < size:
                data = self._read_body(CHUNK_BYTES)
                if not data:
                    raise CorruptedBatchError(
                        f"{self.where} ends at byte {self.bytes_read:,}, after {objects} objects, inside a header "
                        "or before its end-of-archive blocks: it is cut short"
                    )
                parts.append(data)
                have += len(data)
            self._buffer, start = b"".join(parts), 0
        self._start = start + size
        self.position += size
        return self._buffer[start : start + size]

    def _chunk(self, most: int) -> bytes:
        """Up to ``most`` (> 0) bytes of member data, without copying whole body reads."""
        start = self._start
        if start < len(self._buffer):
            size = min(most, len(self._buffer) - start)
            chunk = self._buffer if start == 0 and size == len(self._buffer) else self._buffer[start : start + size]
            self._start = start + size
        else:
            chunk = self._read_body(min(most, CHUNK_BYTES))
            if not chunk:
                raise CorruptedBatchError(f"{self.where} ends at byte {self.bytes_read:,}, inside a member's data")
        self.position += len(chunk)
        return chunk

    def _read(self, size: int) -> bytes:
        parts, left = [], size
        while left:
            parts.append(self._chunk(left))
            left -= len(parts[-1])
        return b"".join(parts)

    def _skip(self, size: int) -> None:
        while size:
            size -= len(self._chunk(size))

    def _drain(self) -> int:
        """Read to the end of the object (its digest covers it all), noting anything that is not zeros.

        Returns how many bytes followed the first end-of-archive block, which is consumed already.
        """
        ending = self._buffer[self._start :]
        self._buffer, self._start = b"", 0
        after = 0
        while ending:
            if self._trailing_nonzero is None and ending.count(0) != len(ending):
                self._trailing_nonzero = self.position + len(ending) - len(ending.lstrip(b"\0"))
            self.position += len(ending)
            after += len(ending)
            ending = self._read_body(CHUNK_BYTES)
        return after


def _facts_digest(entry: IndexEntry) -> bytes:
    """16 bytes that differ for any two different entries: what the stream keeps to compare with the index."""
    key, name, offset, size, sha256, content_type, metadata = entry
    facts = (key, name, offset, size, sha256, content_type, sorted(metadata.items()))
    return hashlib.blake2b(repr(facts).encode("utf-8"), digest_size=_DIGEST_BYTES).digest()


def _ref(bucket: str, key: str, batch_id: str, etag: str, entry: IndexEntry, where: str) -> BatchRef:
    try:
        return BatchRef(bucket, key, entry.offset, entry.size, entry.key, batch_id, etag, entry.sha256)
    except InvalidRefError as exc:
        raise CorruptedBatchError(f"{where}: {exc}") from exc


def _running_checksum(metadata: dict[str, str]) -> Checksum | None:
    """A running checksum of the algorithm the batch's metadata names (None for batches written without one)."""
    stored = Stored.decode(metadata.get(checksums.METADATA))
    return Checksum(stored.algorithm) if stored is not None else None
