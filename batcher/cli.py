"""The ``s3batch`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from batcher import operations
from batcher.errors import CorruptedBatchError, InvalidRefError, S3BatchError
from batcher.index import ObjectInfo
from batcher.membernames import MAX_SEGMENT_BYTES
from batcher.models import BatchRef
from batcher.reader import BatchReader
from batcher.tarstream import Progress

MANIFEST = ".s3batch/manifest.jsonl"  # written by `extract`; no object member is ever named under .s3batch/


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s3batch", description="Many small objects, few S3 PutObject calls.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run the whole job on embedded defaults and print what batching saved",
        description="Starts a local redis-server and an in-process S3-compatible server unless "
        "S3BATCH_REDIS_URL and AWS_ENDPOINT_URL_S3/AWS_ENDPOINT_URL say otherwise, runs a worker with "
        "beat, sends sample objects, reads some back by range and prints a summary.",
    )
    demo.add_argument("--objects", type=int, default=3000, help="sample objects to send (default 3000)")
    demo.add_argument("--workers", type=int, default=1, help="worker processes (default 1, with beat)")
    demo.add_argument("--concurrency", type=int, default=2, help="pool processes per worker (default 2)")
    demo.add_argument("--read-back", type=int, default=50, help="objects to read back by range (default 50)")
    demo.add_argument("--seed", type=int, default=42, help="random seed for sizes and contents")

    dead = commands.add_parser(
        "dead-letters",
        help="list batches whose upload failed for good (their objects are kept in Redis)",
    )
    dead.add_argument("--json", action="store_true", help="one JSON object per line")

    retry = commands.add_parser(
        "retry",
        help="upload dead-lettered batches again (the next flush takes them)",
        description="Gives dead-lettered batches a fresh retry budget; a running worker's next flush uploads "
        "them and its callers' results turn from FAILURE to SUCCESS.",
    )
    retry.add_argument("batch_ids", nargs="*", metavar="BATCH_ID", help="batches to retry")
    retry.add_argument("--all", action="store_true", help="retry every dead-lettered batch")

    stats = commands.add_parser("stats", help="objects waiting, batches in flight, dead letters, lifetime counters")
    stats.add_argument("--json", action="store_true", help="one JSON object")

    cost = commands.add_parser("cost", help="PutObject calls and dollars, one per object versus batched")
    cost.add_argument("--objects", type=int, required=True, help="number of objects")
    cost.add_argument("--size", type=int, required=True, help="bytes per object")
    cost.add_argument("--json", action="store_true", help="one JSON object per batch size")

    put = commands.add_parser(
        "put",
        help="bulk-load files and directories, writing their refs as JSON lines",
        description="Stages every file under PATH... (object key = path relative to the PATH given), waits for "
        "their batches, writes one ref per line to --refs-out, and exits 1 listing the files that failed.",
    )
    put.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    put.add_argument("--direct", action="store_true", help="stage straight into Redis (no Celery message per file)")
    put.add_argument("--refs-out", type=Path, help="write the refs as JSON lines to this file")
    put.add_argument("--no-progress", action="store_true", help="no progress bar")

    ls = commands.add_parser(
        "ls",
        help="list a batch's objects from its index (one or two ranged GETs)",
        description="Prints the batch's facts and a table of its objects: data offset, size, content type, key.",
    )
    ls.add_argument("batch", type=batch_url, metavar="s3://BUCKET/KEY.tar")
    ls.add_argument("--json", action="store_true", help="one JSON object per line: the ref, name, type, metadata")

    get = commands.add_parser(
        "get",
        help="write one object to stdout or a file (one ranged GET, SHA-256 checked)",
        description="REF is a ref as JSON (a put_object result, or a line of `s3batch ls --json`; `-` reads it "
        "from stdin) or s3://BUCKET/KEY.tar#OBJECT_KEY, where the object key is everything after the first "
        "'.tar#' (if the batch holds the key more than once, the last one is taken, as S3 would).",
    )
    get.add_argument("ref", metavar="REF")
    get.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here instead of stdout")
    get.add_argument("--no-verify", action="store_true", help="do not check the object's SHA-256")

    extract = commands.add_parser(
        "extract",
        help="stream a batch into a directory, every checksum checked",
        description="Writes every object at its member name under DIR (the key itself wherever the key is a safe "
        f"relative path), never outside DIR, and DIR/{MANIFEST}: one JSON object per line mapping each exact key "
        "to its path, with its size, sha256, content type and metadata.",
    )
    extract.add_argument("batch", type=batch_url, metavar="s3://BUCKET/KEY.tar")
    extract.add_argument("directory", type=Path, metavar="DIR")
    extract.add_argument("--no-progress", action="store_true", help="no progress bar (none when stderr is no tty)")

    verify = commands.add_parser(
        "verify",
        help="read a whole batch and check every checksum; exit status 0 when intact, 1 when not",
        description="Checks every object's SHA-256, the index against the members, the trailer, and the tar's "
        "SHA-256 stored at upload, with one GET. Exit status: 0 intact, 1 damaged or unreadable.",
    )
    verify.add_argument("batch", type=batch_url, metavar="s3://BUCKET/KEY.tar")
    verify.add_argument("--no-progress", action="store_true", help="no progress bar (none when stderr is no tty)")
    return parser


def batch_url(text: str) -> tuple[str, str]:
    """(bucket, key) of ``s3://BUCKET/KEY``; the argparse type of a batch argument."""
    bucket, _, key = text.removeprefix("s3://").partition("/")
    if not text.startswith("s3://") or not bucket or not key:
        raise argparse.ArgumentTypeError(f"expected s3://BUCKET/KEY.tar, got {text!r}")
    return bucket, key


def ls(reader: BatchReader, bucket: str, key: str, as_json: bool) -> int:
    index = reader.index(bucket, key)
    if as_json:
        for info in index.objects:
            print(json.dumps(_describe(info), ensure_ascii=False, sort_keys=True))
        return 0
    print(
        f"s3://{bucket}/{key}: batch {index.batch_id}, {len(index.objects):,} objects, created {index.created}, "
        f"written by {index.writer}, format {index.format}"
    )
    print(f"{'offset':>14}  {'size':>10}  {'content type':24}  key")
    for info in index.objects:
        ref = info.ref
        shown = ref.object_key if ref.object_key.isprintable() else json.dumps(ref.object_key)
        print(f"{ref.offset:>14}  {ref.size:>10}  {info.content_type or '-':24}  {shown}")
    return 0


def get(reader: BatchReader, text: str, output: Path | None, verify: bool) -> int:
    ref = resolve_ref(reader, sys.stdin.read() if text == "-" else text)
    data = reader.get(ref, verify=verify)
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        output.write_bytes(data)
    return 0


def resolve_ref(reader: BatchReader, text: str) -> BatchRef:
    """The ref that REF names: JSON, or s3://BUCKET/KEY.tar#OBJECT_KEY looked up in the batch's index."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return BatchRef.from_dict(json.loads(text))
        except ValueError as exc:
            raise InvalidRefError(f"REF is not valid JSON: {exc}") from exc
    batch, found, object_key = text.partition(".tar#")
    if not found or not text.startswith("s3://"):
        raise InvalidRefError(f"REF must be a ref as JSON or s3://BUCKET/KEY.tar#OBJECT_KEY, got {text[:200]!r}")
    try:
        bucket, key = batch_url(batch + ".tar")
    except argparse.ArgumentTypeError as exc:
        raise InvalidRefError(str(exc)) from exc
    matches = [info.ref for info in reader.index(bucket, key).objects if info.ref.object_key == object_key]
    if not matches:
        raise InvalidRefError(f"s3://{bucket}/{key} holds no object with key {object_key!r}")
    return matches[-1]


def extract(reader: BatchReader, bucket: str, key: str, directory: Path, progress: bool) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    root = directory.resolve()
    lines: list[str] = []
    size = 0
    with _progress_bar(f"s3://{bucket}/{key}", progress) as update:
        for info, data in reader.iter_batch(bucket, key, progress=update):
            _write_file(root, info.name, data)
            ref = info.ref
            row = {
                "key": ref.object_key, "path": info.name, "offset": ref.offset, "size": ref.size,
                "sha256": ref.sha256, "content_type": info.content_type, "metadata": dict(info.metadata),
            }  # fmt: skip
            lines.append(json.dumps(row, ensure_ascii=False))
            size += len(data)
    _write_file(root, MANIFEST, "".join(f"{line}\n" for line in lines).encode("utf-8"))
    print(f"extracted {len(lines):,} objects ({size:,} bytes) to {directory}; exact keys in {directory / MANIFEST}",
          file=sys.stderr)  # fmt: skip
    return 0


def verify(reader: BatchReader, bucket: str, key: str, progress: bool) -> int:
    with _progress_bar(f"s3://{bucket}/{key}", progress) as update:
        check = reader.verify(bucket, key, progress=update)
    if check.ok:
        print(f"s3://{bucket}/{key}: intact: {check.objects:,} objects, {check.bytes_read:,} bytes, checksums match")
        return 0
    print(f"s3://{bucket}/{key}: DAMAGED ({len(check.problems)} problems after {check.objects:,} objects)")
    for problem in check.problems:
        print(f"  {problem}")
    return 1


def _describe(info: ObjectInfo) -> dict[str, Any]:
    """The ref's fields (what `s3batch get` takes) and the member name, content type and metadata."""
    return {**info.ref.to_dict(), "name": info.name, "content_type": info.content_type, "metadata": dict(info.metadata)}


def _write_file(root: Path, name: str, data: bytes) -> None:
    """Write ``data`` at the relative path ``name`` under ``root``; CorruptedBatchError for a name that could escape."""
    segments = name.split("/")
    if any(
        segment in ("", ".", "..") or len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES
        or any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in segment)  # the controls member names escape
        for segment in segments
    ):  # fmt: skip
        raise CorruptedBatchError(f"member name {name!r} is not a safe relative path; refusing to write it")
    path = root
    for segment in segments[:-1]:  # one level at a time, so that no symlink already in DIR is followed
        path /= segment
        if path.is_symlink():
            raise CorruptedBatchError(f"{path} is a symlink; refusing to write {name!r} through it")
        path.mkdir(exist_ok=True)
    fd = os.open(path / segments[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with open(fd, "wb") as file:
        file.write(data)


@contextmanager
def _progress_bar(what: str, enabled: bool) -> Iterator[Progress]:
    """A tqdm bar of bytes on stderr (none when ``enabled`` is false or stderr is not a terminal)."""
    from tqdm import tqdm  # type: ignore[import-untyped]

    file: IO[str] = sys.stderr
    with tqdm(desc=what, unit="B", unit_scale=True, unit_divisor=1024, file=file, disable=None if enabled else True,
              leave=False) as bar:  # fmt: skip

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield update


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from workers.demo import run_demo  # imports Celery, so only when asked

            return run_demo(
                objects=args.objects,
                workers=args.workers,
                concurrency=args.concurrency,
                read_back=args.read_back,
                seed=args.seed,
            )
        if args.command == "dead-letters":
            return operations.dead_letters(args.json)
        if args.command == "retry":
            return operations.retry(args.batch_ids, args.all)
        if args.command == "stats":
            return operations.stats(args.json)
        if args.command == "cost":
            return operations.cost(args.objects, args.size, args.json)
        if args.command == "put":
            from workers.bulkload import put_paths  # imports Celery, so only when asked

            return put_paths(args.paths, direct=args.direct, refs_out=args.refs_out, progress=not args.no_progress)
        if args.command == "get":
            return get(BatchReader(), args.ref, args.output, not args.no_verify)
        if args.command in ("ls", "extract", "verify"):
            bucket, key = args.batch
            if args.command == "ls":
                return ls(BatchReader(), bucket, key, args.json)
            if args.command == "extract":
                return extract(BatchReader(), bucket, key, args.directory, not args.no_progress)
            return verify(BatchReader(), bucket, key, not args.no_progress)
    except (S3BatchError, OSError) as exc:
        print(f"s3batch: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("s3batch: interrupted", file=sys.stderr)
        return 130
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
