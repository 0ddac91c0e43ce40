"""One whole batch read as a stream: its objects in tar order, then checks of its index and trailer.

Python's ``tarfile`` parses the stream (pax headers included) as the GET
response arrives, so memory holds one object at a time. A damaged header ends
what any tar reader can read; the missing trailer then says so.
"""

from __future__ import annotations

import hashlib
import itertools
import tarfile
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError

from batcher.errors import ChecksumMismatchError, CorruptedBatchError, InvalidRefError, ReadError
from batcher.index import (
    INDEX_NAME,
    META_BATCH_ID,
    TRAILER_NAME,
    IndexEntry,
    IndexLocation,
    ObjectInfo,
    decode_index,
    decode_trailer,
    is_reserved,
    location_from_metadata,
    member_entry,
)
from batcher.models import BatchRef
from batcher.uploader import SHA256_METADATA

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import GetObjectOutputTypeDef

CHUNK_BYTES = 1024 * 1024

Progress = Callable[[int, int], None]
"""Called with (bytes read so far, total bytes) while a whole batch streams."""


class BatchStream:
    """The objects of one whole-tar GET response in tar order; at the end, checks of the index and trailer."""

    def __init__(self, response: GetObjectOutputTypeDef, bucket: str, key: str, progress: Progress | None) -> None:
        self.response, self.bucket, self.key, self.progress = response, bucket, key, progress
        self.where = f"s3://{bucket}/{key}"
        self.digest = hashlib.sha256()
        self.bytes_read = 0
        self.total = 0
        self.metadata: dict[str, str] = {}

    def __iter__(self) -> Iterator[tuple[ObjectInfo, bytes]]:
        response = self.response
        self.total, self.metadata = int(response["ContentLength"]), dict(response.get("Metadata", {}))
        etag = str(response["ETag"])
        batch_id = self.metadata.get(META_BATCH_ID) or PurePosixPath(self.key).stem
        entries: list[IndexEntry] = []
        index: tuple[int, bytes] | None = None
        trailer: IndexLocation | None = None
        body = response["Body"]
        hashing = _Hashing(body, self)
        try:
            with body, tarfile.open(fileobj=hashing, mode="r|") as tar:  # type: ignore[call-overload]
                for info in tar:
                    if trailer is not None or not info.isreg():
                        raise CorruptedBatchError(
                            f"unexpected member {info.name!r} at byte {info.offset} of {self.where}"
                        )
                    member = tar.extractfile(info)
                    data = member.read() if member is not None else b""
                    if len(data) != info.size:
                        raise CorruptedBatchError(f"{self.where} ends inside member {info.name!r}")
                    if info.name == INDEX_NAME and index is None:
                        index = (info.offset_data, data)
                    elif info.name == TRAILER_NAME:
                        trailer = decode_trailer(data)
                    elif index is not None or is_reserved(info.name):
                        raise CorruptedBatchError(
                            f"unexpected member {info.name!r} at byte {info.offset} of {self.where}"
                        )
                    else:
                        entry = member_entry(info)
                        entries.append(entry)
                        ref = _ref(self.bucket, self.key, batch_id, etag, entry, self.where)
                        yield ObjectInfo(ref, entry.name, entry.content_type, entry.metadata), data
                while hashing.read(CHUNK_BYTES):  # the end-of-archive blocks count for the digest too
                    pass
        except tarfile.TarError as exc:
            raise CorruptedBatchError(
                f"{self.where} is not a readable tar after byte {self.bytes_read}: {exc}"
            ) from exc
        except BotoCoreError as exc:
            raise ReadError(f"could not read {self.where}: {exc}") from exc
        self._check_index(entries, index, trailer, etag)

    def _check_index(
        self, entries: list[IndexEntry], index: tuple[int, bytes] | None, trailer: IndexLocation | None, etag: str
    ) -> None:
        if index is None or trailer is None:
            raise CorruptedBatchError(
                f"{self.where} ends after {len(entries)} objects without its index and trailer "
                "(a damaged header ends what tar tools can read)"
            )
        location = IndexLocation(index[0], len(index[1]), hashlib.sha256(index[1]).hexdigest())
        if trailer != location:
            raise CorruptedBatchError(f"the trailer of {self.where} says {trailer}, the index member is {location}")
        if location_from_metadata(self.metadata) not in (None, location):
            raise CorruptedBatchError(f"the S3 metadata of {self.where} locates another index than its trailer")
        listed = [info.entry() for info in decode_index(index[1], bucket=self.bucket, key=self.key, etag=etag).objects]
        for n, (row, member) in enumerate(itertools.zip_longest(listed, entries)):
            if row != member:
                raise CorruptedBatchError(
                    f"the index of {self.where} disagrees with its members at object {n}: "
                    f"index {row!r:.300}, member {member!r:.300}"
                )

    def check_tar_digest(self) -> None:
        """Raise ChecksumMismatchError unless the streamed tar has the SHA-256 stored at upload."""
        expected = self.metadata.get(SHA256_METADATA)
        if expected is not None and self.digest.hexdigest() != expected:
            raise ChecksumMismatchError(f"{self.where} has sha256 {self.digest.hexdigest()}, uploaded as {expected}")


class _Hashing:
    """A readable view of a response body that feeds the stream's digest, byte count and progress."""

    def __init__(self, body: Any, stream: BatchStream) -> None:
        self.body, self.stream = body, stream

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.body.read(size if size >= 0 else None)
        stream = self.stream
        stream.digest.update(data)
        stream.bytes_read += len(data)
        if stream.progress is not None and data:
            stream.progress(stream.bytes_read, stream.total)
        return data


def _ref(bucket: str, key: str, batch_id: str, etag: str, entry: IndexEntry, where: str) -> BatchRef:
    try:
        return BatchRef(bucket, key, entry.offset, entry.size, entry.key, batch_id, etag, entry.sha256)
    except InvalidRefError as exc:
        raise CorruptedBatchError(f"member {entry.name!r} of {where}: {exc}") from exc
