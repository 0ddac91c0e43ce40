"""The ``s3batch`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from batcher.errors import S3BatchError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3batch", description="Many small objects, few S3 PutObject calls."
    )
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
    return parser


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
    except S3BatchError as exc:
        print(f"s3batch: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("s3batch: interrupted", file=sys.stderr)
        return 130
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
