"""The ``s3batch`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from batcher.config import Settings
from batcher.errors import S3BatchError
from batcher.staging import Staging, connect


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
    return parser


def _staging() -> Staging:
    return Staging(connect(Settings.from_env().redis_url))


def dead_letters(as_json: bool) -> int:
    rows = _staging().dead_letters()
    if as_json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return 0
    if not rows:
        print("no dead-lettered batches")
        return 0
    print(f"{'batch_id':26}  {'objects':>8}  {'bytes':>12}  {'attempts':>8}  {'dead since (UTC)':19}  last error")
    for row in rows:
        since = datetime.fromtimestamp(int(row.get("dead_ms", "0")) / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{row.get('batch_id', '?'):26}  {int(row.get('objects', 0)):>8,}  {int(row.get('bytes', 0)):>12,}  "
            f"{row.get('attempts', '0'):>8}  {since:19}  {row.get('last_error', '')[:200]}"
        )
    return 0


def retry(batch_ids: Sequence[str], every: bool) -> int:
    staging = _staging()
    if every:
        batch_ids = [row["batch_id"] for row in staging.dead_letters()]
    elif not batch_ids:
        print("s3batch: error: name the batches to retry, or pass --all", file=sys.stderr)
        return 2
    now_ms = int(time.time() * 1000)
    missing = [batch_id for batch_id in batch_ids if not staging.revive(batch_id, now_ms)]
    for batch_id in batch_ids:
        if batch_id not in missing:
            print(f"{batch_id}: queued for upload by the next flush")
    for batch_id in missing:
        print(
            f"s3batch: error: {batch_id} is not a dead-lettered batch (see `s3batch dead-letters`)",
            file=sys.stderr,
        )
    return 1 if missing else 0


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
            return dead_letters(args.json)
        if args.command == "retry":
            return retry(args.batch_ids, args.all)
    except S3BatchError as exc:
        print(f"s3batch: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("s3batch: interrupted", file=sys.stderr)
        return 130
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
