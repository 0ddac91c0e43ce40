"""Read objects back from their batches: by ref, many at once, a batch's index, or a whole batch.

Every request is a plain GET with at most one byte range (S3 has no multi-range
GETs): ``get`` sends one per object, ``get_many`` one per run of nearby objects
in a tar, ``index`` one or two whatever the batch size, ``iter_batch`` and
``verify`` one for the whole tar, ``head`` one small one before the object.
A batch is untrusted input: every size it claims is checked against the
object and against ``max_memory_bytes`` before anything is downloaded or
allocated for it, and every text from it in a message is escaped.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from batcher.errors import (
    BatchArchivedError,
    BatchNotFoundError,
    ChecksumMismatchError,
    CorruptedBatchError,
    InvalidRefError,
    MemoryLimitError,
    ReadError,
)
from batcher.index import BLOCK, BatchIndex, ObjectInfo, decode_index, entry_from_facts, locate_index
from batcher.models import BatchRef
from batcher.printable import printable, quoted
from batcher.tarheader import member_before
from batcher.tarstream import CHUNK_BYTES, DEFAULT_MAX_MEMORY_BYTES, BatchStream, Progress
from batcher.uploader import s3_client as default_s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import GetObjectOutputTypeDef

DEFAULT_GAP_BYTES = 1024 * 1024
TAIL_BYTES = 64 * 1024  # trailer, end blocks and record padding take at most 12 KiB; the rest often holds the index
# The most header a member can have before its data: a pax header block, at most 24 KiB of pax records (a
# 1,024-byte key escaped in its name and its JSON, 2 KiB of metadata JSON-escaped), and the ustar block.
HEADER_WINDOW_BYTES = 32 * 1024
# verify lists at most this many damaged objects, then counts the rest: a hostile batch of 300,000 bad
# objects must not make its report the largest thing in memory.
MAX_PROBLEMS = 100
_MISSING = {"NoSuchKey", "NoSuchBucket", "404"}
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


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
    """Fetches objects from their batches; ``gap_bytes`` is how far apart two objects may be for one GET.

    ``max_memory_bytes`` (default 64 MiB) bounds the batch content that one call holds at once, checked
    before it is downloaded: the bytes ``get`` and ``get_many`` return, the index and the objects that
    ``index`` decodes from it (estimated per row), the object that ``iter_batch`` yields (briefly twice
    that while its chunks are joined), and what ``verify``, ``iter_batch`` and ``stream`` remember while
    a whole batch streams (digests of names and facts, then the index). Past it, MemoryLimitError says
    how much was needed. A call also uses a fixed amount besides: chunks of at most 1 MiB, one HTTP
    response, Python itself.
    """

    def __init__(
        self,
        s3_client: S3Client | None = None,
        *,
        gap_bytes: int = DEFAULT_GAP_BYTES,
        max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    ) -> None:
        if not isinstance(gap_bytes, int) or gap_bytes < 0:
            raise ValueError(f"gap_bytes must be an integer >= 0, got {gap_bytes!r}")
        if not isinstance(max_memory_bytes, int) or max_memory_bytes < TAIL_BYTES:
            raise ValueError(f"max_memory_bytes must be an integer >= {TAIL_BYTES}, got {max_memory_bytes!r}")
        self.client = s3_client or default_s3_client()
        self.gap_bytes = gap_bytes
        self.max_memory_bytes = max_memory_bytes

    def get(self, ref: BatchRef, *, verify: bool = True) -> bytes:
        """The object's bytes, from one ranged GET (none for an empty object).

        The response's length is checked before its body is read, so a ref that runs past the end of
        the tar fails without downloading it. Raises BatchNotFoundError, InvalidRefError, MemoryLimitError
        (a ref larger than max_memory_bytes, before any request), ChecksumMismatchError (when ``verify``)
        or ReadError.
        """
        _check_ref(ref)
        data = b""
        if ref.size:
            self._limit(ref.size, f"{quoted(ref.object_key)} ({ref.size:,} bytes)")
            where = f"{ref.range} of {_url(ref.bucket, ref.key)}"
            response = self._get(ref.bucket, ref.key, ref.range)
            with response["Body"] as body:
                _check_length(response, ref.size, where, [ref])
                data = _read(body, ref.size, where)
        if verify:
            _verify(ref, data)
        return data

    def get_many(self, refs: Iterable[BatchRef], *, verify: bool = True) -> list[bytes]:
        """Every ref's bytes, in the order given, with one GET per run of objects at most ``gap_bytes`` apart.

        The bytes between the objects of a run are read and dropped, never kept; refs to the same bytes
        share one bytes object. Raises as ``get``; MemoryLimitError, before any request, when the
        distinct objects asked for add up to more than max_memory_bytes.
        """
        refs = list(refs)
        for ref in refs:
            _check_ref(ref)
        spans = {(ref.bucket, ref.key, ref.offset, ref.size) for ref in refs}
        self._limit(sum(span[3] for span in spans), f"the {len(spans):,} distinct objects asked of get_many")
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

        The trailer, in the first GET, gives the index's size: an index larger than max_memory_bytes is
        refused before it is downloaded, and its decoding stops once its objects would hold more. Raises
        BatchNotFoundError, CorruptedBatchError (no trailer, damaged index), MemoryLimitError or ReadError.
        """
        where = _url(bucket, key)
        try:
            response = self._get(bucket, key, f"bytes=-{TAIL_BYTES}")
        except InvalidRefError as exc:
            # A suffix range is unsatisfiable only on an empty object: AWS S3 and SeaweedFS answer 416 there
            # (moto answers 200 with no bytes). There is no ref to blame; the object is no batch.
            raise CorruptedBatchError(f"{where} is empty: a batch ends with an s3batch trailer") from exc
        with response["Body"] as body:
            length = int(response.get("ContentLength", 0))
            if length > TAIL_BYTES:
                raise ReadError(f"{where}: the server answered {length:,} bytes to a {TAIL_BYTES:,}-byte suffix range")
            tail = _read(body, length, f"the end of {where}")
        total = _total_size(response, len(tail))
        etag = str(response["ETag"])
        location = locate_index(tail, total)
        if location.size == 0:
            raise CorruptedBatchError(f"the trailer of {where} gives an empty index; an index has a header line")
        self._limit(location.size, f"the index of {where} ({location.size:,} bytes)")
        start, end = total - len(tail), location.offset + location.size
        if location.offset >= start:
            data = tail[location.offset - start : end - start]
        else:  # the index begins before the tail: fetch what is missing, from the same version of the object
            size = min(end, start) - location.offset
            missing = self._get(bucket, key, f"bytes={location.offset}-{location.offset + size - 1}", if_match=etag)
            with missing["Body"] as body:
                _check_length(missing, size, f"the index of {where}", [])
                data = _read(body, size, f"the index of {where}")
            data += tail[: max(0, end - start)]
        if hashlib.sha256(data).hexdigest() != location.sha256:
            raise CorruptedBatchError(f"the index of {where} does not match the SHA-256 in its trailer")
        return decode_index(data, bucket=bucket, key=key, etag=etag, max_memory_bytes=self.max_memory_bytes)

    def head(self, ref: BatchRef) -> ObjectInfo:
        """The object's member name, content type and metadata, from one GET of the header before its data.

        Reads at most HEADER_WINDOW_BYTES. Raises InvalidRefError when the ref does not point at the data
        of that object's member, CorruptedBatchError when its headers are not the writer's.
        """
        _check_ref(ref)
        if ref.offset < BLOCK or ref.offset % BLOCK:
            raise InvalidRefError(
                f"offset {ref.offset} of {quoted(ref.object_key)} is not where a tar member's data starts"
            )
        start = max(0, ref.offset - HEADER_WINDOW_BYTES)
        where = f"the header of {quoted(ref.object_key)} in {_url(ref.bucket, ref.key)}"
        response = self._get(ref.bucket, ref.key, f"bytes={start}-{ref.offset - 1}")
        with response["Body"] as body:
            _check_length(response, ref.offset - start, where, [])
            window = _read(body, ref.offset - start, where)
        name, size, pax = member_before(window, where)
        entry = entry_from_facts(name, ref.offset, size, pax.get("comment"), where)
        if (entry.key, entry.size, entry.sha256) != (ref.object_key, ref.size, ref.sha256):
            raise InvalidRefError(
                f"the member at offset {ref.offset} of {_url(ref.bucket, ref.key)} is {quoted(entry.key)} "
                f"({entry.size} bytes, sha256 {entry.sha256}), not the ref's {quoted(ref.object_key)}"
            )
        return ObjectInfo(ref, entry.name, entry.content_type, entry.metadata)

    def stream(self, bucket: str, key: str, *, progress: Progress | None = None) -> BatchStream:
        """The whole batch as one streaming GET: (ObjectInfo, MemberData) per object, data in chunks.

        Iterate it, read each member's data (or not), then call ``check_tar_digest``; see BatchStream.
        For callers that write objects somewhere as they arrive (batcher.extract) without holding them.
        """
        return BatchStream(self._get(bucket, key), bucket, key, progress, max_memory_bytes=self.max_memory_bytes)

    def iter_batch(
        self, bucket: str, key: str, *, verify: bool = True, progress: Progress | None = None
    ) -> Iterator[tuple[ObjectInfo, bytes]]:
        """Every object of the batch with its ref and bytes, in tar order, from one streaming GET.

        Each object is checked against its SHA-256 before it is yielded (when ``verify``); at the end the
        index, the trailer and the tar's own SHA-256 are checked against what streamed. Raises
        BatchNotFoundError, ChecksumMismatchError, CorruptedBatchError, MemoryLimitError (an object
        larger than max_memory_bytes, before it is read) or ReadError.
        """
        stream = self.stream(bucket, key, progress=progress)
        for info, member in stream:
            self._limit(member.size, f"{quoted(info.ref.object_key)} ({member.size:,} bytes) of {stream.where}")
            data = member.read()
            if verify and member.hexdigest() != info.ref.sha256:
                _verify(info.ref, data)
            yield info, data
        if verify:
            stream.check_tar_digest()

    def verify(self, bucket: str, key: str, *, progress: Progress | None = None) -> BatchCheck:
        """Read the whole batch once and check every object's SHA-256, the index, the trailer and the tar's digest.

        Objects are hashed in chunks as they stream, never held. Damage is reported in the result, not
        raised: each object with a bad checksum (the first MAX_PROBLEMS, then a count), and the first
        thing that makes the rest unreadable (a header, a member or a name the writer never makes, a
        damaged index or trailer). BatchNotFoundError,
        MemoryLimitError (an index larger than max_memory_bytes) and ReadError are raised.
        """
        stream = self.stream(bucket, key, progress=progress)
        problems: list[str] = []
        objects = unlisted = 0
        try:
            for info, member in stream:
                objects += 1
                for _ in member.chunks():
                    pass
                digest = member.hexdigest()
                if digest == info.ref.sha256:
                    continue
                if len(problems) == MAX_PROBLEMS:
                    unlisted += 1
                    continue
                problems.append(
                    f"{quoted(info.ref.object_key)} at {info.ref.range or 'offset ' + str(info.ref.offset)}: "
                    f"sha256 {digest}, expected {info.ref.sha256}"
                )
            stream.check_tar_digest()
        except (CorruptedBatchError, ChecksumMismatchError) as exc:
            problems.append(str(exc))
        if unlisted:
            problems.insert(MAX_PROBLEMS, f"{unlisted:,} more objects do not match their sha256 (not listed)")
        return BatchCheck(bucket, key, objects, stream.bytes_read, problems)

    def _limit(self, size: int, what: str) -> None:
        """MemoryLimitError unless ``size`` bytes fit in max_memory_bytes."""
        if size > self.max_memory_bytes:
            raise MemoryLimitError(
                f"{what} would hold {size:,} bytes, over the reader's max_memory_bytes ({self.max_memory_bytes:,}): "
                "raise max_memory_bytes, or read fewer objects at once"
            )

    def _read_run(self, bucket: str, key: str, run: _Run, refs: Sequence[BatchRef], results: list[bytes]) -> None:
        """One GET for a run of clusters of objects; the bytes between clusters are read and dropped."""
        where = f"bytes={run.start}-{run.end - 1} of {_url(bucket, key)}"
        response = self._get(bucket, key, f"bytes={run.start}-{run.end - 1}")
        with response["Body"] as body:
            _check_length(response, run.end - run.start, where, [refs[n] for c in run.clusters for n in c.numbers])
            position = run.start
            for cluster in run.clusters:
                while position < cluster.start:
                    position += len(_read(body, min(CHUNK_BYTES, cluster.start - position), where))
                data = _read(body, cluster.end - cluster.start, where)
                position = cluster.end
                shared: dict[tuple[int, int], bytes] = {}
                for n in cluster.numbers:
                    span = (refs[n].offset - cluster.start, refs[n].size)
                    if span not in shared:
                        whole = span == (0, len(data))
                        shared[span] = data if whole else data[span[0] : span[0] + span[1]]
                    results[n] = shared[span]

    def _get(
        self, bucket: str, key: str, byte_range: str | None = None, *, if_match: str | None = None
    ) -> GetObjectOutputTypeDef:
        """GetObject with errors translated; ``byte_range`` is one range, never a list."""
        where = _url(bucket, key)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if byte_range:
            kwargs["Range"] = byte_range
        if if_match:
            kwargs["IfMatch"] = if_match
        try:
            return self.client.get_object(**kwargs)
        except ClientError as exc:
            code = printable(str(exc.response.get("Error", {}).get("Code", "")), max_chars=80)
            if code in _MISSING:
                raise BatchNotFoundError(f"batch {where} does not exist ({code})") from exc
            if code == "InvalidRange":
                raise InvalidRefError(f"{byte_range} is outside {where}") from exc
            if code == "InvalidObjectState":
                raise BatchArchivedError(
                    f"{where} is in an archive storage class (S3 Glacier Flexible Retrieval, Deep Archive, or an "
                    "Intelligent-Tiering archive tier) and must be restored before it can be read: "
                    f"`aws s3api restore-object --bucket {printable(bucket)} --key {printable(key)} --restore-request "
                    "Days=7`, then read it again once the restore is done (minutes to hours)"
                ) from exc
            if code in ("PreconditionFailed", "412"):
                raise ReadError(f"{where} changed while it was being read (its ETag is no longer {if_match})") from exc
            raise ReadError(f"could not read {byte_range or 'all'} of {where}: {code}") from exc
        except BotoCoreError as exc:
            raise ReadError(f"could not read {byte_range or 'all'} of {where}: {printable(str(exc))}") from exc


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


def _url(bucket: str, key: str) -> str:
    """``s3://bucket/key`` for messages, escaped: a key may hold any character."""
    return f"s3://{printable(bucket)}/{printable(key)}"


def _verify(ref: BatchRef, data: bytes) -> None:
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise ChecksumMismatchError(
            f"{quoted(ref.object_key)} in {_url(ref.bucket, ref.key)} ({ref.range or 'empty'}) does not match its "
            f"sha256 {ref.sha256}: the batch is corrupted or the ref points at the wrong bytes"
        )


def _check_length(response: Any, expected: int, where: str, refs: Sequence[BatchRef]) -> None:
    """Before a body is read: InvalidRefError when the range ran past the object, ReadError for another length."""
    length = int(response.get("ContentLength", -1))
    if length == expected:
        return
    match = _CONTENT_RANGE.match(str(response.get("ContentRange", "")))
    if match is None or length > expected:
        raise ReadError(f"{where}: the server answered {length:,} bytes for a range of {expected:,}")
    total = int(match.group(3))
    past = [ref for ref in refs if ref.offset + ref.size > total]
    shown = f" ({quoted(past[0].object_key)} ends at byte {past[0].offset + past[0].size:,})" if past else ""
    raise InvalidRefError(
        f"{where} runs past the end of the tar, which has {total:,} bytes{shown}: the ref does not point into this tar"
    )


def _read(body: Any, size: int, where: str) -> bytes:
    """Exactly ``size`` bytes of a response body, read in chunks; ReadError if it ends sooner or fails."""
    parts: list[bytes] = []
    left = size
    try:
        while left > 0:
            part = body.read(min(left, CHUNK_BYTES))
            if not part:
                break
            parts.append(part)
            left -= len(part)
    except BotoCoreError as exc:
        raise ReadError(f"could not read {where}: {printable(str(exc))}") from exc
    if left:
        raise ReadError(f"{where} returned {size - left} bytes, expected {size}")
    return b"".join(parts)


def _total_size(response: Any, received: int) -> int:
    match = _CONTENT_RANGE.match(str(response.get("ContentRange", "")))
    return int(match.group(3)) if match else received
