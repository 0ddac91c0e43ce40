"""The ``s3batch`` command line: one parser, one dispatch; the library does the work, this module formats it.

The library's commands are defined here. An adapter adds its own through the
``s3batch.commands`` entry point group (``workers.cli`` registers ``demo`` and
``put``), so the core never imports the adapter.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import IO, Any

from batcher import operations
from batcher.config import Settings
from batcher.cost import PRICES, cost_table
from batcher.errors import InvalidRefError, S3BatchError
from batcher.extract import MANIFEST_NAME, extract_batch
from batcher.find import find, parse_since
from batcher.index import ObjectInfo
from batcher.lanes import Lanes
from batcher.models import BatchRef
from batcher.printable import printable
from batcher.reader import BatchReader
from batcher.tarstream import Progress

ENTRY_POINT_GROUP = "s3batch.commands"
MANIFEST = MANIFEST_NAME


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, help, arguments, and the function that runs it (returns the exit status)."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


def batch_url(text: str) -> tuple[str, str]:
    """(bucket, key) of ``s3://BUCKET/KEY``; the argparse type of a batch argument."""
    bucket, _, key = text.removeprefix("s3://").partition("/")
    if not text.startswith("s3://") or not bucket or not key:
        raise argparse.ArgumentTypeError(f"expected s3://BUCKET/KEY.tar, got {text!r}")
    return bucket, key


def _lanes() -> Lanes:
    return Lanes.for_settings(Settings.from_env())


def _print_json(row: Any) -> None:
    # ASCII only: a batch's keys and metadata are untrusted, and JSON escapes keep control and bidi
    # characters from reaching the terminal.
    print(json.dumps(row, sort_keys=True))


# ---- stats, cost, dead letters, retry ----


def _stats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object (with --by-lane, one per line)")
    parser.add_argument("--by-lane", action="store_true", help="the figures of each lane, with its bucket and prefix")


def _stats(args: argparse.Namespace) -> int:
    lanes = _lanes()
    if args.by_lane:
        for lane, row in operations.stats_by_lane(lanes).items():
            partition = lanes.partition_of(lane)
            described = {"lane": lane, "bucket": partition.bucket, "prefix": partition.prefix, **row}
            if args.json:
                _print_json(described)
            else:
                print(f"{lane}  s3://{printable(partition.bucket)}/{printable(partition.prefix)}  "
                      + "  ".join(f"{k}={v}" for k, v in row.items() if k != "lanes"))  # fmt: skip
        return 0
    figures = operations.stats(lanes)
    if args.json:
        _print_json(figures)
        return 0
    for name, value in figures.items():
        shown = f"{value:,}" if isinstance(value, int) else str(value)
        print(f"{name.replace('_', ' '):22} {shown}")
    return 0


def _cost_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--objects", type=int, required=True, help="number of objects")
    parser.add_argument("--size", type=int, required=True, help="bytes per object")
    parser.add_argument(
        "--storage-class", default="STANDARD", choices=sorted(PRICES), type=str.upper,
        help="price requests, storage (with the class's minimum billable size) and lifecycle transitions in this "
        "class (default STANDARD)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="one JSON object per batch size")


def _cost(args: argparse.Namespace) -> int:
    rows = cost_table(args.objects, args.size, storage_class=args.storage_class)
    if args.json:
        for row in rows:
            _print_json(asdict(row))
        return 0
    price = PRICES[args.storage_class]
    transitions = price.transition_usd_per_1000 is not None
    print(
        f"{args.objects:,} objects of {args.size:,} bytes, S3 {args.storage_class} us-east-1 list prices (PUT "
        f"${price.put_usd_per_1000:g} per 1,000, ${price.storage_usd_per_gb_month:g} per GB-month"
        + (f", at least {price.min_billable_bytes // 1024} KiB billed per object" if price.min_billable_bytes else "")
        + (f", {price.min_days} days minimum" if price.min_days else "")
        + (f"; lifecycle transition from STANDARD ${price.transition_usd_per_1000:g} per 1,000 objects" if transitions
           else "")
        + ")"
    )  # fmt: skip
    print(
        f"{'objects per PUT':>16}  {'PUT requests':>13}  {'PUT cost':>11}  {'stored GB':>10}  {'billed GB':>10}  "
        f"{'storage/month':>13}" + (f"  {'transition':>11}" if transitions else "")
    )
    for row in rows:
        label = "1 (naive)" if row.batch_objects == 1 else f"{row.batch_objects:,}"
        print(
            f"{label:>16}  {row.put_requests:>13,}  ${row.put_usd:>10,.4f}  {row.stored_bytes / 1e9:>10.3f}  "
            f"{row.billed_bytes / 1e9:>10.3f}  ${row.storage_usd_month:>12,.4f}"
            + (f"  ${row.transition_usd or 0:>10,.4f}" if transitions else "")
        )
    return 0


def _dead_letters(args: argparse.Namespace) -> int:
    rows = operations.dead_letters(_lanes())
    if args.json:
        for row in rows:
            _print_json(row)
        return 0
    if not rows:
        print("no dead-lettered batches")
        return 0
    print(f"{'batch_id':30}  {'objects':>8}  {'bytes':>12}  {'reason':9}  {'dead since (UTC)':19}  bucket  last error")
    for row in rows:
        since = datetime.fromtimestamp(int(row.get("dead_ms", "0")) / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{row.get('batch_id', '?'):30}  {int(row.get('objects', 0)):>8,}  {int(row.get('bytes', 0)):>12,}  "
            f"{row.get('dead_reason', '?'):9}  {since:19}  {row.get('bucket', '?')}  "
            f"{printable(row.get('last_error', '')[:200])}"
        )
    return 0


def _retry_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("batch_ids", nargs="*", metavar="BATCH_ID", help="batches to retry")
    parser.add_argument("--all", action="store_true", help="retry every dead-lettered batch")


def _retry(args: argparse.Namespace) -> int:
    if not args.all and not args.batch_ids:
        print("s3batch: error: name the batches to retry, or pass --all", file=sys.stderr)
        return 2
    lanes = _lanes()
    done = operations.retry_all(lanes) if args.all else operations.retry(lanes, args.batch_ids)
    for batch_id in done.queued:
        print(f"{batch_id}: queued for upload by the next flush")
    for batch_id in done.missing:
        print(f"s3batch: error: {batch_id} is not a dead-lettered batch (see `s3batch dead-letters`)", file=sys.stderr)
    return 1 if done.missing else 0


# ---- reading batches ----


def _ls_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("batch", type=batch_url, metavar="s3://BUCKET/KEY.tar")
    parser.add_argument("--json", action="store_true", help="one JSON object per line: the ref, name, type, metadata")


def _ls(args: argparse.Namespace) -> int:
    bucket, key = args.batch
    index = BatchReader().index(bucket, key)
    if args.json:
        for info in index.objects:
            _print_json(_describe(info))
        return 0
    print(
        f"{_url(bucket, key)}: batch {printable(index.batch_id)}, {len(index.objects):,} objects, created "
        f"{printable(index.created)}, written by {printable(index.writer)}, format {index.format}"
    )
    print(f"{'offset':>14}  {'size':>10}  {'content type':24}  key")
    for info in index.objects:
        ref = info.ref
        shown = ref.object_key if ref.object_key.isprintable() else json.dumps(ref.object_key)
        print(f"{ref.offset:>14}  {ref.size:>10}  {printable(info.content_type or '-'):24}  {shown}")
    return 0


def _describe(info: ObjectInfo) -> dict[str, Any]:
    """The ref's fields (what `s3batch get` takes) and the member name, content type and metadata."""
    return {**info.ref.to_dict(), "name": info.name, "content_type": info.content_type, "metadata": dict(info.metadata)}


def _get_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", metavar="REF")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here instead of stdout")
    parser.add_argument("--no-verify", action="store_true", help="do not check the object's SHA-256")


def _get(args: argparse.Namespace) -> int:
    reader = BatchReader()
    ref = resolve_ref(reader, sys.stdin.read() if args.ref == "-" else args.ref)
    data = reader.get(ref, verify=not args.no_verify)
    if args.output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        args.output.write_bytes(data)
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


def _extract_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("batch", type=batch_url, metavar="s3://BUCKET/KEY.tar")
    parser.add_argument("directory", type=Path, metavar="DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (none when stderr is no tty)")


def _extract(args: argparse.Namespace) -> int:
    bucket, key = args.batch
    with _progress_bar(_url(bucket, key), not args.no_progress) as update:
        done = extract_batch(BatchReader(), bucket, key, args.directory, progress=update)
    print(
        f"extracted {done.objects:,} objects ({done.bytes_written:,} bytes) to {printable(str(done.directory))}; "
        f"exact keys in {printable(str(done.manifest))}",
        file=sys.stderr,
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    bucket, key = args.batch
    with _progress_bar(_url(bucket, key), not args.no_progress) as update:
        check = BatchReader().verify(bucket, key, progress=update)
    if check.ok:
        print(f"{_url(bucket, key)}: intact: {check.objects:,} objects, {check.bytes_read:,} bytes, checksums match")
        return 0
    print(f"{_url(bucket, key)}: DAMAGED ({len(check.problems)} problems after {check.objects:,} objects)")
    for problem in check.problems:
        print(f"  {_shown(problem)}")
    return 1


def _url(bucket: str, key: str) -> str:
    return f"s3://{printable(bucket)}/{printable(key)}"


def _shown(message: str) -> str:
    """A message as it may reach a terminal: the reader's are escaped already, others are escaped here."""
    return message if message.isprintable() else printable(message)


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("batch", type=batch_url, metavar="s3://BUCKET/KEY.tar")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (none when stderr is no tty)")


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


def _find_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("object_key", metavar="KEY", help="the object key the producer gave")
    parser.add_argument("--since", metavar="TIME", help="only batches from this hour on: 2026-11-30T12:00, or 6h, 7d")
    parser.add_argument("--bucket", help="the bucket to search (default: S3BATCH_BUCKET)")
    parser.add_argument("--prefix", help="the batches' prefix (default: S3BATCH_PREFIX)")


def _find(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    bucket = args.bucket or settings.require_bucket()
    prefix = settings.prefix if args.prefix is None else args.prefix
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(f"s3batch: error: --since {exc}", file=sys.stderr)
        return 2
    matches = 0
    for info in find(BatchReader(), bucket, prefix, args.object_key, since):
        _print_json(_describe(info))
        matches += 1
    if not matches:
        where = f"s3://{printable(bucket)}/{printable(prefix)}" + (
            f" since {since:%Y-%m-%d %H:00} UTC" if since else ""
        )
        print(f"s3batch: no batch under {where} holds {printable(args.object_key)!r}", file=sys.stderr)
        return 1
    return 0


def _metrics_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=9808, help="port to serve /metrics on (default 9808)")
    parser.add_argument("--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--once", action="store_true", help="print one scrape to stdout and exit instead of serving")


def _metrics(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry, generate_latest

    from batcher import metrics

    settings = Settings.from_env()
    client = Lanes.for_settings(settings).client
    if args.once:
        registry = CollectorRegistry()
        registry.register(metrics.S3BatchCollector(client, settings))
        sys.stdout.write(generate_latest(registry).decode())
        return 0
    server = metrics.serve(client, settings, args.address, args.port)
    print(f"s3batch metrics: serving http://{args.address}:{server.server_port}/metrics", file=sys.stderr, flush=True)
    try:
        threading.Event().wait()  # the server runs in its own thread until the process is stopped
    finally:
        server.shutdown()
    return 0


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


COMMANDS = [
    Command("dead-letters", "list batches whose upload failed for good (their objects are kept in Redis)",
            _json_flag, _dead_letters),
    Command("retry", "upload dead-lettered batches again (the next flush takes them)", _retry_arguments, _retry,
            "Gives dead-lettered batches a fresh retry budget; a running worker's next flush uploads them and its "
            "callers' results turn from FAILURE to SUCCESS."),
    Command("stats", "objects waiting, batches in flight, dead letters, lifetime counters", _stats_arguments, _stats),
    Command("metrics", "serve Prometheus metrics of every partition at /metrics, read from Redis at each scrape",
            _metrics_arguments, _metrics,
            "Serves what every worker's flushes recorded in Redis (counters and histograms) and what staging holds, "
            "per bucket and prefix; one scrape costs the same few Redis commands however many partitions there are. "
            "README, 'Metrics', lists the names."),
    Command("cost", "PutObject calls and dollars, one per object versus batched", _cost_arguments, _cost),
    Command("ls", "list a batch's objects from its index (one or two ranged GETs)", _ls_arguments, _ls,
            "Prints the batch's facts and a table of its objects: data offset, size, content type, key."),
    Command("get", "write one object to stdout or a file (one ranged GET, SHA-256 checked)", _get_arguments, _get,
            "REF is a ref as JSON (a put_object result, or a line of `s3batch ls --json`; `-` reads it from stdin) "
            "or s3://BUCKET/KEY.tar#OBJECT_KEY, where the object key is everything after the first '.tar#' (if the "
            "batch holds the key more than once, the last one is taken, as S3 would)."),
    Command("extract", "stream a batch into a directory, every checksum checked", _extract_arguments, _extract,
            "Writes every object at its member name under DIR (the key itself wherever the key is a safe relative "
            f"path), never outside DIR, and DIR/{MANIFEST}: one JSON object per line mapping each exact key to its "
            "path, with its size, sha256, content type and metadata. DIR must be new or empty; nothing is left "
            "in it unless every object was checked."),
    Command("find", "find an object whose ref was lost, from the batches' indexes", _find_arguments, _find,
            "Lists the batches under the prefix (from the hour of --since on), reads each one's index (one or two "
            "ranged GETs) and prints the ref of every object stored under KEY as a JSON line, oldest first; exit "
            "status 1 when none is found."),
    Command("verify", "read a whole batch and check every checksum; exit status 0 when intact, 1 when not",
            _verify_arguments, _verify,
            "Checks every object's SHA-256, the index against the members, the trailer, and the tar's SHA-256 "
            "stored at upload, with one GET. Exit status: 0 intact, 1 damaged or unreadable."),
]  # fmt: skip


def all_commands() -> list[Command]:
    """The library's commands and those adapters register (entry point group ``s3batch.commands``)."""
    found = [entry.load() for entry in entry_points(group=ENTRY_POINT_GROUP)]
    return sorted([*COMMANDS, *(c for c in found if isinstance(c, Command))], key=lambda command: command.name)


def build_parser(commands: Sequence[Command] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s3batch", description="Many small objects, few S3 PutObject calls.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands if commands is not None else all_commands():
        sub = subparsers.add_parser(command.name, help=command.help, description=command.description or command.help)
        command.arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args)
        return status
    except (S3BatchError, OSError) as exc:
        print(f"s3batch: error: {_shown(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("s3batch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run as ``python -m batcher.cli``: dispatch through the imported module, whose Command class is the one
    # the adapters' commands are instances of.
    from batcher import cli

    sys.exit(cli.main())
