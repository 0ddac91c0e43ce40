"""Read objects back from their batches: by ref, many at once, a batch's index, or a whole batch.

Every request is a plain GET with at most one byte range (S3 has no multi-range
GETs): ``get`` sends one per object, ``get_many`` one per run of nearby objects
in a tar, ``index`` one or two whatever the batch size, ``iter_batch`` and
``verify`` one for the whole tar, ``head`` one small one before the object.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from batcher.errors import (
    BatchNotFoundError,
    ChecksumMismatchError,
    CorruptedBatchError,
    InvalidRefError,
    ReadError,
)
from batcher.index import (
    BLOCK,
    BatchIndex,
    ObjectInfo,
    decode_index,
    locate_index,
    member_entry,
)
from batcher.models import BatchRef
from batcher.tarstream import CHUNK_BYTES, BatchStream, Progress
from batcher.uploader import s3_client as default_s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import GetObjectOutputTypeDef

DEFAULT_GAP_BYTES = 1024 * 1024
TAIL_BYTES = 64 * 1024  # trailer, end blocks and record padding take at most 12 KiB; the rest often holds the index
# The most header a member can have before its data: a pax header block, at most 24 KiB of pax records (a
# 1,024-byte key escaped in its name and its JSON, 2 KiB of metadata JSON-escaped), and the ustar block.
HEADER_WINDOW_BYTES = 32 * 1024
_MISSING = {"NoSuchKey", "NoSuchBucket", "404"}
_CONTENT_RANGE = re.compile(r"^bytes \d+-\d+/(\d+)$")


@dataclass(frozen=True)
class BatchCheck:
    """What ``verify`` found: objects and bytes read, and every problem (none means intact)."""

    bucket: str
    key: str
    objects: int
    bytes_read: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class BatchReader:
    """Fetches objects from their batches; ``gap_bytes`` is how far apart two objects may be for one GET."""

    def __init__(self, s3_client: S3Client | None = None, *, gap_bytes: int = DEFAULT_GAP_BYTES) -> None:
        if not isinstance(gap_bytes, int) or gap_bytes < 0:
            raise ValueError(f"gap_bytes must be an integer >= 0, got {gap_bytes!r}")
        self.client = s3_client or default_s3_client()
        self.gap_bytes = gap_bytes

    def get(self, ref: BatchRef, *, verify: bool = True) -> bytes:
        """The object's bytes, from one ranged GET (none for an empty object).

        Raises BatchNotFoundError, InvalidRefError, ChecksumMismatchError (when ``verify``) or ReadError.
        """
        _check_ref(ref)
        data = b""
        if ref.size:
            body = self._get(ref.bucket, ref.key, ref.range)["Body"]
            with body:
                data = _read(body, ref.size, f"{ref.range} of s3://{ref.bucket}/{ref.key}")
        if verify:
            _verify(ref, data)
        return data

    def get_many(self, refs: Iterable[BatchRef], *, verify: bool = True) -> list[bytes]:
        """Every ref's bytes, in the order given, with one GET per run of objects at most ``gap_bytes`` apart.

        The bytes between the objects of a run are read and dropped, never kept. Raises as ``get``.
        """
        refs = list(refs)
        for ref in refs:
            _check_ref(ref)
        results = [b""] * len(refs)
        by_tar: dict[tuple[str, str], list[int]] = {}
        for n, ref in enumerate(refs):
            if ref.size:
                by_tar.setdefault((ref.bucket, ref.key), []).append(n)
        for (bucket, key), numbers in by_tar.items():
            for run in _plan_runs(
                [(refs[n].offset, refs[n].offset + refs[n].size, n) for n in numbers], self.gap_bytes
            ):
                self._read_run(bucket, key, run, refs, results)
        if verify:
            for ref, data in zip(refs, results, strict=True):
                _verify(ref, data)
        return results

    def index(self, bucket: str, key: str) -> BatchIndex:
        """The batch's facts and every object's ref, content type and metadata, from one or two ranged GETs.

        Raises BatchNotFoundError, CorruptedBatchError (no trailer, damaged index) or ReadError.
        """
        response = self._get(bucket, key, f"bytes=-{TAIL_BYTES}")
        with response["Body"] as body:
            tail = _read(body, int(response["ContentLength"]), f"the end of s3://{bucket}/{key}")
        total = _total_size(response, len(tail))
        etag = str(response["ETag"])
        location = locate_index(tail, total)
        start, end = total - len(tail), location.offset + location.size
        if location.offset >= start:
            data = tail[location.offset - start : end - start]
        else:  # the index begins before the tail: fetch what is missing, from the same version of the object
            missing = self._get(bucket, key, f"bytes={location.offset}-{min(end, start) - 1}", if_match=etag)
            with missing["Body"] as body:
                data = _read(body, min(end, start) - location.offset, f"the index of s3://{bucket}/{key}")
            data += tail[: max(0, end - start)]
        if hashlib.sha256(data).hexdigest() != location.sha256:
            raise CorruptedBatchError(f"the index of s3://{bucket}/{key} does not match the SHA-256 in its trailer")
        return decode_index(data, bucket=bucket, key=key, etag=etag)

    def head(self, ref: BatchRef) -> ObjectInfo:
        """The object's member name, content type and metadata, from one GET of the header before its data.

        Raises InvalidRefError when the ref does not point at the data of that object's member.
        """
        _check_ref(ref)
        if ref.offset < BLOCK or ref.offset % BLOCK:
            raise InvalidRefError(f"offset {ref.offset} of {ref.object_key!r} is not where a tar member's data starts")
        start = max(0, ref.offset - HEADER_WINDOW_BYTES)
        where = f"the header of {ref.object_key!r} in s3://{ref.bucket}/{ref.key}"
        with self._get(ref.bucket, ref.key, f"bytes={start}-{ref.offset - 1}")["Body"] as body:
            window = _read(body, ref.offset - start, where)
        info = _member_before(window, where)
        entry = member_entry(info)
        if (entry.key, entry.size, entry.sha256) != (ref.object_key, ref.size, ref.sha256):
            raise InvalidRefError(
                f"the member at offset {ref.offset} of s3://{ref.bucket}/{ref.key} is {entry.key!r} "
                f"({entry.size} bytes, sha256 {entry.sha256}), not the ref's {ref.object_key!r}"
            )
        return ObjectInfo(ref, entry.name, entry.content_type, entry.metadata)

    def iter_batch(
        self, bucket: str, key: str, *, verify: bool = True, progress: Progress | None = None
    ) -> Iterator[tuple[ObjectInfo, bytes]]:
        """Every object of the batch with its ref and bytes, in tar order, from one streaming GET.

        Each object is checked against its SHA-256 before it is yielded (when ``verify``); at the end the
        index, the trailer and the tar's own SHA-256 are checked against what streamed. Raises
        BatchNotFoundError, ChecksumMismatchError, CorruptedBatchError or ReadError.
        """
        stream = BatchStream(self._get(bucket, key), bucket, key, progress)
        for info, data in stream:
            if verify:
                _verify(info.ref, data)
            yield info, data
        if verify:
            stream.check_tar_digest()

    def verify(self, bucket: str, key: str, *, progress: Progress | None = None) -> BatchCheck:
        """Read the whole batch once and check every object's SHA-256, the index, the trailer and the tar's digest.

        Damage is reported in the result, not raised; BatchNotFoundError and ReadError are raised.
        """
        stream = BatchStream(self._get(bucket, key), bucket, key, progress)
        problems: list[str] = []
        objects = 0
        try:
            for info, data in stream:
                objects += 1
                digest = hashlib.sha256(data).hexdigest()
                if digest != info.ref.sha256:
                    problems.append(
                        f"{info.ref.object_key!r} at {info.ref.range}: sha256 {digest}, expected {info.ref.sha256}"
                    )
            stream.check_tar_digest()
        except (CorruptedBatchError, ChecksumMismatchError) as exc:
            problems.append(str(exc))
        return BatchCheck(bucket, key, objects, stream.bytes_read, problems)

    def _read_run(self, bucket: str, key: str, run: _Run, refs: Sequence[BatchRef], results: list[bytes]) -> None:
        """One GET for a run of clusters of objects; the bytes between clusters are read and dropped."""
        where = f"bytes={run.start}-{run.end - 1} of s3://{bucket}/{key}"
        with self._get(bucket, key, f"bytes={run.start}-{run.end - 1}")["Body"] as body:
            position = run.start
            for cluster in run.clusters:
                while position < cluster.start:
                    position += len(_read(body, min(CHUNK_BYTES, cluster.start - position), where))
                data = _read(body, cluster.end - cluster.start, where)
                position = cluster.end
                for n in cluster.numbers:
                    offset = refs[n].offset - cluster.start
                    results[n] = data[offset : offset + refs[n].size]

    def _get(
        self, bucket: str, key: str, byte_range: str | None = None, *, if_match: str | None = None
    ) -> GetObjectOutputTypeDef:
        """GetObject with errors translated; ``byte_range`` is one range, never a list."""
        where = f"s3://{bucket}/{key}"
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if byte_range:
            kwargs["Range"] = byte_range
        if if_match:
            kwargs["IfMatch"] = if_match
        try:
            return self.client.get_object(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                raise BatchNotFoundError(f"batch {where} does not exist ({code})") from exc
            if code == "InvalidRange":
                raise InvalidRefError(f"{byte_range} is outside {where}") from exc
            if code in ("PreconditionFailed", "412"):
                raise ReadError(f"{where} changed while it was being read (its ETag is no longer {if_match})") from exc
            raise ReadError(f"could not read {byte_range or 'all'} of {where}: {code}") from exc
        except BotoCoreError as exc:
            raise ReadError(f"could not read {byte_range or 'all'} of {where}: {exc}") from exc


@dataclass
class _Cluster:
    """Objects whose byte spans overlap or touch each other: read together and kept."""

    start: int
    end: int
    numbers: list[int]


@dataclass
class _Run:
    """Clusters at most ``gap_bytes`` apart, read with one GET."""

    start: int
    end: int
    clusters: list[_Cluster]


def _plan_runs(spans: list[tuple[int, int, int]], gap_bytes: int) -> list[_Run]:
    """Group (start, end, number) byte spans of one tar into GETs: one per run of spans at most gap_bytes apart."""
    runs: list[_Run] = []
    for start, end, n in sorted(spans):
        run = runs[-1] if runs else None
        if run is not None and start <= run.clusters[-1].end:
            cluster = run.clusters[-1]
            cluster.end = max(cluster.end, end)
            cluster.numbers.append(n)
        elif run is not None and start - run.end <= gap_bytes:
            run.clusters.append(_Cluster(start, end, [n]))
        else:
            runs.append(_Run(start, end, [_Cluster(start, end, [n])]))
            continue
        run.end = max(run.end, end)
    return runs


def _check_ref(ref: object) -> None:
    if not isinstance(ref, BatchRef):
        raise InvalidRefError(f"the reader takes a BatchRef (BatchRef.from_dict(result)), got {type(ref).__name__}")


def _verify(ref: BatchRef, data: bytes) -> None:
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise ChecksumMismatchError(
            f"{ref.object_key!r} in s3://{ref.bucket}/{ref.key} ({ref.range or 'empty'}) does not match its sha256 "
            f"{ref.sha256}: the batch is corrupted or the ref points at the wrong bytes"
        )


def _read(body: Any, size: int, where: str) -> bytes:
    """Exactly ``size`` bytes of a response body; ReadError if it ends sooner or fails."""
    parts: list[bytes] = []
    left = size
    try:
        while left > 0:
            part = body.read(left)
            if not part:
                break
            parts.append(part)
            left -= len(part)
    except BotoCoreError as exc:
        raise ReadError(f"could not read {where}: {exc}") from exc
    if left:
        raise ReadError(f"{where} returned {size - left} bytes, expected {size}")
    return b"".join(parts)


def _total_size(response: Any, received: int) -> int:
    match = _CONTENT_RANGE.match(str(response.get("ContentRange", "")))
    return int(match.group(1)) if match else received


def _member_before(window: bytes, where: str) -> tarfile.TarInfo:
    """The member whose headers end ``window``: its pax header is found by walking back block by block.

    Pax records never hold a NUL byte (names and JSON escape control characters), so no block inside
    them parses as a header; the first one that does, and whose records end where the ustar header
    starts, is the member's own.
    """
    ustar = len(window) - BLOCK
    for position in range(ustar - BLOCK, -1, -BLOCK):
        try:
            header = tarfile.TarInfo.frombuf(window[position : position + BLOCK], "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            continue
        if header.type == tarfile.XHDTYPE and position + BLOCK + -(-header.size // BLOCK) * BLOCK == ustar:
            try:
                with tarfile.TarFile(fileobj=io.BytesIO(window[position:])) as tar:
                    info = tar.next()  # the member that the pax header belongs to
            except tarfile.TarError as exc:
                raise CorruptedBatchError(f"{where} is damaged: {exc}") from exc
            if info is not None and info.offset_data == len(window) - position:
                return info
    try:
        tarfile.TarInfo.frombuf(window[ustar:], "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        raise InvalidRefError(f"{where}: the ref's offset is not where a tar member's data starts") from exc
    raise CorruptedBatchError(f"{where}: the member has no s3batch pax header")
