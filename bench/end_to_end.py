"""End-to-end benchmark: s3batch through Celery workers versus one PutObject per object.

Run from the project root: ``python -m bench.end_to_end`` (``--quick`` for a smoke run).
It starts its own redis-server and moto S3 server on free loopback ports, exactly
like the tests, and sends nothing anywhere else.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3

from batcher.embedded import RedisServer, S3Server
from workers.process import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
USD_PER_1000_PUTS = 0.005
MULTIPART_THRESHOLD_BYTES = 128 * 1024 * 1024

# Variables a user's shell may set that would point the benchmark somewhere else.
_STRAY_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE",
              "AWS_SHARED_CREDENTIALS_FILE")  # fmt: skip


def put_cost_usd(calls: int) -> float:
    """Request cost of ``calls`` PutObject requests at $0.005 per 1,000."""
    return calls * USD_PER_1000_PUTS / 1000


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of ``values`` (seconds in, seconds out)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def make_bodies(count: int, size: int, seed: int) -> list[bytes]:
    """Distinct pseudo-random bodies, so a wrong range can never return the right bytes by chance."""
    rng = random.Random(seed)
    return [rng.randbytes(size) for _ in range(count)]


def s3_client(endpoint_url: str) -> Any:
    # A session per client: boto3's default session is not thread-safe to create clients from.
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url)


# --- 1. naive baseline --------------------------------------------------------------------------------


def run_naive(endpoint_url: str, bucket: str, bodies: Sequence[bytes], threads: int) -> dict[str, Any]:
    """One put_object per object from ``threads`` threads, each with its own client."""
    clients = [s3_client(endpoint_url) for _ in range(threads)]
    for client in clients:  # open a connection before the clock starts
        client.head_bucket(Bucket=bucket)
    prefix = f"naive-{threads}t/"
    local = threading.local()
    handed_out = iter(clients)
    lock = threading.Lock()

    def client_for_thread() -> Any:
        if not hasattr(local, "client"):
            with lock:
                local.client = next(handed_out)
        return local.client

    def put(i: int) -> None:
        client_for_thread().put_object(Bucket=bucket, Key=f"{prefix}{i:08d}", Body=bodies[i])

    start = time.perf_counter()
    if threads == 1:
        for i in range(len(bodies)):
            put(i)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(put, range(len(bodies))))
    seconds = time.perf_counter() - start
    stored = count_objects(clients[0], bucket, prefix)
    if stored != len(bodies):
        raise RuntimeError(f"naive {threads} threads: {stored} objects in the bucket, expected {len(bodies)}")
    return {
        "scenario": f"naive boto3, {threads} thread{'s' if threads != 1 else ''}",
        "threads": threads,
        "objects": len(bodies),
        "seconds": seconds,
        "objects_per_s": len(bodies) / seconds,
        "put_calls": len(bodies),
        "cost_usd": put_cost_usd(len(bodies)),
    }


def count_objects(client: Any, bucket: str, prefix: str = "") -> int:
    return sum(len(page.get("Contents", [])) for page in list_pages(client, bucket, prefix))


def list_pages(client: Any, bucket: str, prefix: str = "") -> Any:
    return client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)


# --- 2. workers -----------------------------------------------------------------------------------------


def wait_ready(app: Any, workers: Sequence[WorkerProcess], timeout_s: float = 90) -> None:
    """Poll ``app.control.ping`` until every worker answers (its consumer is then running)."""
    missing = {w.node for w in workers}
    deadline = time.monotonic() + timeout_s
    while missing:
        for worker in workers:
            if worker.process.poll() is not None:
                raise RuntimeError(f"worker {worker.name} exited ({worker.process.returncode}):\n{worker.log()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers {sorted(missing)} did not answer a ping within {timeout_s} s")
        for reply in app.control.ping(destination=sorted(missing), timeout=0.5) or []:
            missing -= set(reply)


# --- 2. s3batch end to end ------------------------------------------------------------------------------


def run_s3batch(app: Any, put_object: Any, bodies: Sequence[bytes], timeout_s: float) -> dict[str, Any]:
    """Send every object with put_object.delay() and wait for every SUCCESS with join_native."""
    from celery import states
    from celery.result import ResultSet

    results = []
    sent_wall: dict[str, float] = {}
    sent_perf: dict[str, float] = {}
    start = time.perf_counter()
    for i, body in enumerate(bodies):
        wall, perf = time.time(), time.perf_counter()
        result = put_object.delay(f"bench/{i:08d}", body)
        sent_wall[result.id], sent_perf[result.id] = wall, perf
        results.append(result)
    send_seconds = time.perf_counter() - start

    arrived: dict[str, float] = {}
    values: dict[str, Any] = {}

    def on_result(task_id: str, value: Any) -> None:
        arrived[task_id] = time.perf_counter()
        values[task_id] = value

    join = "join_native(callback)"
    try:
        ResultSet(results).join_native(timeout=timeout_s, callback=on_result)
    except NotImplementedError:  # a backend without native join: wait one by one
        join = "AsyncResult.get() loop"
        for result in results:
            if result.id not in values:
                on_result(result.id, result.get(timeout=timeout_s))
    seconds = time.perf_counter() - start
    if len(values) != len(results):
        raise RuntimeError(f"join returned {len(values)} results for {len(results)} tasks")
    not_success = [r.id for r in results if r.state != states.SUCCESS]
    if not_success:
        raise RuntimeError(f"{len(not_success)} tasks are not SUCCESS, e.g. {not_success[:3]}")

    done_at = date_done_by_id(app, [r.id for r in results])
    latency_done = [done_at[tid] - sent_wall[tid] for tid in sent_wall]
    latency_seen = [arrived[tid] - sent_perf[tid] for tid in sent_perf]
    last_done = max(done_at.values())
    return {
        "scenario": "s3batch end to end",
        "objects": len(bodies),
        "seconds": seconds,
        "objects_per_s": len(bodies) / seconds,
        "send_seconds": send_seconds,
        "send_per_s": len(bodies) / send_seconds,
        "join": join,
        "seconds_to_last_date_done": last_done - min(sent_wall.values()),
        "latency_s": {
            # date_done: when the flush stored SUCCESS, i.e. when a waiting caller could wake up.
            "date_done_p50": percentile(latency_done, 50),
            "date_done_p99": percentile(latency_done, 99),
            "date_done_max": max(latency_done),
            # callback: when this (single-threaded) producer saw it; results that arrive while it
            # is still sending are only read once it starts joining, so this is an upper bound.
            "callback_p50": percentile(latency_seen, 50),
            "callback_p99": percentile(latency_seen, 99),
            "callback_max": max(latency_seen),
            "mean_date_done": statistics.fmean(latency_done),
        },
        "_values": [values[r.id] for r in results],
    }


def date_done_by_id(app: Any, task_ids: Sequence[str]) -> dict[str, float]:
    """Unix time of each task's ``date_done`` (ISO, UTC) read from the result backend in a few MGETs."""
    backend = app.backend
    out: dict[str, float] = {}
    for start in range(0, len(task_ids), 1000):
        chunk = task_ids[start : start + 1000]
        raw = backend.client.mget([backend.get_key_for_task(tid) for tid in chunk])
        for tid, value in zip(chunk, raw, strict=True):
            if value is None:
                raise RuntimeError(f"no result meta for task {tid}")
            meta = backend.decode_result(value)
            done = meta["date_done"]
            out[tid] = (done if isinstance(done, datetime) else datetime.fromisoformat(done)).timestamp()
    return out


# --- 3. PutObject calls and 4. correctness --------------------------------------------------------------


def batch_listing(client: Any, bucket: str) -> list[dict[str, Any]]:
    return [item for page in list_pages(client, bucket) for item in page.get("Contents", [])]


def verify_sample(client: Any, values: Sequence[dict[str, Any]], bodies: Sequence[bytes], sample: int) -> int:
    """Ranged GET of ``sample`` random results; raises unless each returns exactly the bytes sent."""
    picked = random.Random(1).sample(range(len(values)), min(sample, len(values)))
    for i in picked:
        ref = values[i]
        if ref["object_key"] != f"bench/{i:08d}":
            raise RuntimeError(f"result {i} is for {ref['object_key']!r}")
        got = client.get_object(Bucket=ref["bucket"], Key=ref["key"], Range=ref["range"])["Body"].read()
        if got != bodies[i]:
            raise RuntimeError(f"object {i}: ranged GET {ref['range']} of {ref['key']} returned other bytes")
    return len(picked)


# --- output ---------------------------------------------------------------------------------------------


def print_table(rows: Sequence[dict[str, Any]], out: Callable[[str], None] = print) -> None:
    header = (
        "scenario",
        "objects",
        "seconds",
        "objects/s",
        "PutObject calls",
        "cost USD",
        "USD per 1M objects",
    )
    lines = [header] + [
        (
            r["scenario"],
            f"{r['objects']:,}",
            f"{r['seconds']:.2f}",
            f"{r['objects_per_s']:,.0f}",
            f"{r['put_calls']:,}",
            f"{r['cost_usd']:.6f}",
            f"{r['usd_per_million_objects']:.4f}",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for n, line in enumerate(lines):
        out(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if n == 0:
            out("  ".join("-" * w for w in widths))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.end_to_end", description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000, help="objects sent through s3batch")
    parser.add_argument("--size", type=int, default=1024, help="bytes per object")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (one of them runs beat)")
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes per worker")
    parser.add_argument("--naive-objects", type=int, default=2000, help="objects per naive run")
    parser.add_argument("--naive-threads", default="1,16", help="comma list of thread counts for naive runs")
    parser.add_argument(
        "--max-batch-age",
        type=float,
        default=None,
        help="S3BATCH_MAX_BATCH_AGE for the workers (default: the project default, 10 s)",
    )
    parser.add_argument("--verify", type=int, default=100, help="random results to read back by range")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for every SUCCESS")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="smoke run: 500 objects, 200 naive")
    args = parser.parse_args(argv)
    if args.quick:
        args.objects, args.naive_objects = 500, 200
    args.naive_threads = [int(t) for t in str(args.naive_threads).split(",") if t.strip()]
    if args.objects < 1 or args.size < 1 or args.workers < 1 or args.concurrency < 1 or args.naive_objects < 1:
        parser.error("--objects, --size, --workers, --concurrency and --naive-objects must be at least 1")
    if not args.naive_threads or min(args.naive_threads) < 1:
        parser.error("--naive-threads must list thread counts of at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    redis_server: RedisServer | None = None
    s3_server: S3Server | None = None
    workers: list[WorkerProcess] = []
    tmpdir = tempfile.TemporaryDirectory(prefix="s3batch-bench-")
    try:
        redis_server = RedisServer(appendonly=True)
        s3_server = S3Server(in_process=False)
        bucket = f"bench-s3batch-{int(time.time())}"
        naive_bucket = f"{bucket}-naive"
        for name in (*_STRAY_ENV, *[k for k in os.environ if k.startswith("S3BATCH_")]):
            os.environ.pop(name, None)
        os.environ.update(
            CELERY_BROKER_URL=redis_server.url(0),
            CELERY_RESULT_BACKEND=redis_server.url(0),
            S3BATCH_REDIS_URL=redis_server.url(0),
            S3BATCH_BUCKET=bucket,
            AWS_ENDPOINT_URL=s3_server.endpoint_url,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
        )
        if args.max_batch_age is not None:
            os.environ["S3BATCH_MAX_BATCH_AGE"] = str(args.max_batch_age)
        s3 = s3_client(s3_server.endpoint_url)
        s3.create_bucket(Bucket=bucket)
        s3.create_bucket(Bucket=naive_bucket)

        # The app reads the environment when it is imported: only now.
        from batcher.config import Settings
        from workers.app import app
        from workers.tasks import put_object

        settings = Settings.from_env()
        print(f"redis {redis_server.url(0)}, moto S3 {s3_server.endpoint_url}, bucket {bucket}")
        print(
            f"batch age {settings.max_batch_age_s:g} s, max {settings.max_batch_objects:,} objects / "
            f"{settings.max_batch_bytes:,} bytes per batch, flush tick {settings.flush_interval_s:g} s"
        )

        rows: list[dict[str, Any]] = []
        naive_bodies = make_bodies(args.naive_objects, args.size, seed=2)
        for threads in args.naive_threads:
            row = run_naive(s3_server.endpoint_url, naive_bucket, naive_bodies, threads)
            print(
                f"{row['scenario']}: {row['objects']:,} objects in {row['seconds']:.2f} s, "
                f"{row['objects_per_s']:,.0f} objects/s"
            )
            rows.append(row)

        env = dict(os.environ)
        for n in range(args.workers):
            workers.append(
                WorkerProcess(
                    env, f"b{n}", Path(tmpdir.name), beat=n == 0, concurrency=args.concurrency, loglevel="WARNING"
                )
            )
        wait_ready(app, workers)
        print(f"{args.workers} workers x {args.concurrency} processes ready")

        bodies = make_bodies(args.objects, args.size, seed=1)
        timeout_s = args.timeout or 120 + args.objects / 20 + 3 * settings.max_batch_age_s
        batch = run_s3batch(app, put_object, bodies, timeout_s)
        values = batch.pop("_values")
        listing = batch_listing(s3, bucket)
        tar_keys = {item["Key"] for item in listing}
        if {v["key"] for v in values} != tar_keys:
            raise RuntimeError("the results name other tars than the bucket holds")
        if any(item["Size"] >= MULTIPART_THRESHOLD_BYTES for item in listing):
            raise RuntimeError("a batch is over the multipart threshold: it took more than one PutObject")
        batch["put_calls"] = len(listing)
        batch["cost_usd"] = put_cost_usd(len(listing))
        batch["tar_bytes"] = sum(item["Size"] for item in listing)
        batch["verified_ranged_gets"] = verify_sample(s3, values, bodies, args.verify)
        lat = batch["latency_s"]
        print(
            f"{batch['scenario']}: {batch['objects']:,} objects in {batch['seconds']:.2f} s "
            f"({batch['objects_per_s']:,.0f} objects/s, via {batch['join']}); delay() alone "
            f"{batch['send_seconds']:.2f} s = {batch['send_per_s']:,.0f}/s"
        )
        print(
            f"latency send -> SUCCESS (date_done): p50 {lat['date_done_p50']:.2f} s, "
            f"p99 {lat['date_done_p99']:.2f} s, max {lat['date_done_max']:.2f} s; seen by this producer's "
            f"join_native callback: p50 {lat['callback_p50']:.2f} s, p99 {lat['callback_p99']:.2f} s"
        )
        print(
            f"{len(listing)} tars, {batch['tar_bytes']:,} bytes for {args.objects * args.size:,} bytes of "
            f"objects; {batch['verified_ranged_gets']} random ranged GETs returned exactly the bytes sent"
        )
        rows.append(batch)

        for row in rows:
            row["usd_per_million_objects"] = row["cost_usd"] / row["objects"] * 1_000_000
        print()
        print_table(rows)
        comparison: dict[str, Any] = {}
        reference = max((r for r in rows if r.get("threads")), key=lambda r: r["threads"])
        comparison["reference"] = reference["scenario"]
        comparison["throughput_ratio"] = batch["objects_per_s"] / reference["objects_per_s"]
        comparison["put_calls_per_object_ratio"] = batch["put_calls"] / batch["objects"]  # naive: 1 per object
        comparison["cost_per_object_ratio"] = batch["usd_per_million_objects"] / reference["usd_per_million_objects"]
        print()
        print(
            f"s3batch / {reference['scenario']}: throughput x{comparison['throughput_ratio']:.3f}, "
            f"PutObject calls per object x{comparison['put_calls_per_object_ratio']:.6f} "
            f"({batch['objects'] / batch['put_calls']:,.0f} objects per PutObject), "
            f"request cost per object x{comparison['cost_per_object_ratio']:.6f}"
        )

        if args.json is not None:
            report = {
                "config": {
                    "objects": args.objects,
                    "size": args.size,
                    "workers": args.workers,
                    "concurrency": args.concurrency,
                    "naive_objects": args.naive_objects,
                    "naive_threads": args.naive_threads,
                    "max_batch_age_s": settings.max_batch_age_s,
                    "max_batch_objects": settings.max_batch_objects,
                    "max_batch_bytes": settings.max_batch_bytes,
                    "cpus": os.cpu_count(),
                    "usd_per_1000_puts": USD_PER_1000_PUTS,
                },
                "rows": rows,
                "comparison": comparison,
            }
            args.json.write_text(json.dumps(report, indent=2) + "\n")
            print(f"wrote {args.json}")
        return 0
    finally:
        for worker in workers:
            worker.stop()
        for service in (s3_server, redis_server):
            if service is not None:
                service.close()
        tmpdir.cleanup()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process the benchmark started is stopped", file=sys.stderr)
        sys.exit(130)
