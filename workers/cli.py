"""The adapter's ``s3batch`` commands, registered through the ``s3batch.commands`` entry point group.

This module imports no Celery: the commands import it when they run, so other commands start fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from batcher.cli import Command


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--objects", type=int, default=3000, help="sample objects to send (default 3000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1, with beat)")
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes per worker (default 2)")
    parser.add_argument("--read-back", type=int, default=50, help="objects to read back by range (default 50)")
    parser.add_argument("--seed", type=int, default=42, help="random seed for sizes and contents")


def _demo(args: argparse.Namespace) -> int:
    from workers.demo import run_demo

    return run_demo(
        objects=args.objects,
        workers=args.workers,
        concurrency=args.concurrency,
        read_back=args.read_back,
        seed=args.seed,
    )


def _put_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    parser.add_argument("--direct", action="store_true", help="stage straight into Redis (no Celery message per file)")
    parser.add_argument("--refs-out", type=Path, help="write the refs as JSON lines to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (none when stderr is no tty)")
    parser.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop waiting for the uploads after this long (exit status 1)"
    )


def _put(args: argparse.Namespace) -> int:
    from workers.bulkload import put_paths

    return put_paths(
        args.paths, direct=args.direct, refs_out=args.refs_out, progress=not args.no_progress, timeout_s=args.timeout
    )


DEMO = Command(
    "demo",
    "run the whole job on embedded defaults and print what batching saved",
    _demo_arguments,
    _demo,
    "Starts a local redis-server and an in-process S3-compatible server unless S3BATCH_REDIS_URL and "
    "AWS_ENDPOINT_URL_S3/AWS_ENDPOINT_URL say otherwise, runs a worker with beat, sends sample objects, reads "
    "some back by range and prints a summary.",
)
PUT = Command(
    "put",
    "bulk-load files and directories, writing their refs as JSON lines",
    _put_arguments,
    _put,
    "Stages every file under PATH... (object key = path relative to the PATH given), waits for their batches, "
    "writes one ref per line to --refs-out, and exits 1 listing the files that failed.",
)
