"""Staging topologies side by side: ``Batcher.put_objects()`` end to end with staging on one redis-server and
on a 3-master Redis Cluster with 1, 2, 4 and 8 lanes (2 workers of 2 processes each, one producer thread per
lane), and the cost of a flush tick with nothing due among 10,000 partitions.

Run from the project root: ``python -m bench.topologies`` (``--quick`` for a smoke run). Broker and results
live on a redis-server of their own, so the Redis commands counted per object are staging's alone. It starts
every service itself on free loopback ports (the cluster with ``tests.services.rediscluster``, as the tests
do) and sends nothing anywhere else.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from batcher.config import Settings
from batcher.connection import connect
from batcher.embedded import RedisServer, S3Server
from batcher.flush import Flusher
from batcher.keys import IndexKeys
from batcher.lanes import Lanes
from batcher.models import BatchRef, ClaimedBatch, StagedObject
from batcher.partitions import Partition
from batcher.uploader import MULTIPART_THRESHOLD_BYTES, Uploader
from bench.buckets import delete_keys, s3_client
from bench.checks import BenchError, tars_of_run, verify_sample
from bench.services import clean_environment, wait_ready
from tests.services.rediscluster import RedisCluster
from workers.process import WorkerProcess

RESULTS = Path(__file__).resolve().parent / "results"
LANE_COUNTS = (1, 2, 4, 8)
OBJECT_BYTES = 1024


@dataclass(frozen=True)
class Throughput:
    """One end-to-end run of ``put_objects`` on one topology."""

    topology: str
    lanes: int
    objects: int
    seconds: float
    objects_per_s: float
    staging_commands_per_object: float
    tars: int


@dataclass(frozen=True)
class IdleTick:
    """What a flush tick costs when nothing is due, and what the once-a-minute sweep costs, among ``partitions``."""

    topology: str
    partitions: int
    commands_per_tick: float
    ms_per_tick: float
    sweep_commands: int
    sweep_s: float


class _Discard:
    """A ResultSink for the idle ticks, which publish nothing."""

    def publish(self, batch: ClaimedBatch, uploaded: Sequence[tuple[StagedObject, BatchRef]]) -> None:
        raise BenchError(f"an idle tick uploaded batch {batch.batch_id}")

    def fail(self, batch: ClaimedBatch, record_ids: Sequence[str], error: Exception, heads: Any) -> None:
        raise BenchError(f"an idle tick failed batch {batch.batch_id}: {error}")


def commands(urls: Sequence[str]) -> int:
    """Commands processed so far by every node in ``urls`` (the staging Redis, or each cluster master)."""
    total = 0
    for url in urls:
        client = redis.Redis.from_url(url)  # this node alone (a cluster client would ask any node)
        try:
            total += int(client.info("stats")["total_commands_processed"])
        finally:
            client.close()
    return total


@contextmanager
def workers(env: dict[str, str], logdir: Path, count: int = 2) -> Iterator[Any]:
    """``count`` workers of 2 processes (the first with beat) on ``env``; yields the app they serve."""
    from workers.app import create_app

    clean_environment(env)
    app = create_app(Settings.from_env())
    started = [
        WorkerProcess(env, f"topo{n}", logdir, beat=n == 0, concurrency=2, loglevel="WARNING") for n in range(count)
    ]
    try:
        wait_ready(app, started)
        yield app
    finally:
        for worker in started:
            worker.stop()


def run_throughput(
    topology: str, staging_url: str, nodes: Sequence[str], lanes: int, objects: int, env: dict[str, str], logdir: Path
) -> Throughput:
    """``lanes`` producer threads, each ``Batcher(lane=i).put_objects`` of its share, until every result is in."""
    from workers import Batcher

    run_env = {**env, "S3BATCH_REDIS_URL": staging_url, "S3BATCH_LANES": str(lanes)}
    with workers(run_env, logdir):
        settings = Settings.from_env()
        share = objects // lanes
        keys = {lane: [f"{topology}/{lanes}/{lane}/{i:06d}" for i in range(share)] for lane in range(lanes)}
        bodies = {lane: [i.to_bytes(4, "big") * (OBJECT_BYTES // 4) for i in range(share)] for lane in range(lanes)}
        values: dict[int, list[Any]] = {}
        errors: list[BaseException] = []
        batchers = [Batcher(settings, lane=lane) for lane in range(lanes)]

        def produce(lane: int) -> None:
            try:
                result_set = batchers[lane].put_objects(zip(keys[lane], bodies[lane], strict=True))
                values[lane] = result_set.join_native(timeout=600)
            except BaseException as exc:  # re-raised below, in the main thread
                errors.append(exc)

        before = commands(nodes)
        started = time.perf_counter()
        threads = [threading.Thread(target=produce, args=(lane,)) for lane in range(lanes)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        used = commands(nodes) - before
        for batcher in batchers:
            batcher.close()
        if errors:
            raise BenchError(f"{topology}, {lanes} lanes: a producer failed: {errors[0]!r}") from errors[0]
        client = s3_client(env["AWS_ENDPOINT_URL"])
        refs = [ref for lane in range(lanes) for ref in values[lane]]
        what = f"{topology}, {lanes} lanes"
        for lane in range(lanes):
            verify_sample(client, values[lane], keys[lane], bodies[lane], 50, what)
        tars = tars_of_run(client, env["S3BATCH_BUCKET"], refs, what, MULTIPART_THRESHOLD_BYTES)
        delete_keys(client, env["S3BATCH_BUCKET"], list(tars))
    sent = share * lanes
    return Throughput(topology, lanes, sent, seconds, sent / seconds, used / sent, len(tars))


def run_idle_tick(topology: str, staging_url: str, nodes: Sequence[str], partitions: int, bucket: str) -> IdleTick:
    """Register ``partitions`` idle partitions, then count the commands and time of 20 flush ticks."""
    settings = Settings(bucket=bucket, redis_url=staging_url)
    lanes = Lanes(connect(staging_url), settings, IndexKeys("s3batch-idle-bench"))  # out of any worker's sight
    pipe = lanes.client.pipeline(transaction=False)
    for i in range(partitions):  # what Lanes.register writes, a thousand at a time
        partition = Partition(bucket, f"idle/{i:05d}/")
        pipe.hsetnx(lanes.keys.partitions, partition.id, partition.encode())
        pipe.sadd(lanes.keys.lanes, partition.lane(0))
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    flusher = Flusher(settings, lanes, Uploader(s3_client(os.environ["AWS_ENDPOINT_URL"])), _Discard())
    lanes.client.delete(lanes.keys.sweep, lanes.keys.probe)
    before, started = commands(nodes), time.perf_counter()
    flusher.flush()  # takes the sweep's turn (once a minute, one worker) and the probe's
    sweep_s, sweep_commands = time.perf_counter() - started, commands(nodes) - before
    ticks = 20
    before, started = commands(nodes), time.perf_counter()
    for _ in range(ticks):
        if flusher.flush():
            raise BenchError(f"{topology}: an idle tick flushed something")
    seconds, used = time.perf_counter() - started, commands(nodes) - before
    lanes.client.close()
    return IdleTick(topology, partitions, used / ticks, seconds / ticks * 1000, sweep_commands, sweep_s)


def median_run(runs: list[Throughput]) -> Throughput:
    """The run with the median objects/s (its own figures, not a mix of runs)."""
    return sorted(runs, key=lambda run: run.objects_per_s)[len(runs) // 2]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.topologies", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8,000 objects, one run, 1,000 idle partitions")
    parser.add_argument("--objects", type=int, default=None, help="objects per run (default 40,000)")
    parser.add_argument("--runs", type=int, default=None, help="runs per topology (default 3, 1 with --quick)")
    parser.add_argument("--partitions", type=int, default=None, help="idle partitions (default 10,000)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the figures")
    args = parser.parse_args(argv)
    objects = args.objects or (8_000 if args.quick else 40_000)
    runs = args.runs or (1 if args.quick else 3)
    partitions = args.partitions or (1_000 if args.quick else 10_000)
    out = args.json or RESULTS / ("topologies-quick.json" if args.quick else "topologies.json")

    with ExitStack() as stack:
        results = stack.enter_context(_closing(RedisServer(appendonly=False)))
        single = stack.enter_context(_closing(RedisServer(appendonly=True)))
        cluster = stack.enter_context(RedisCluster(masters=3, appendonly=True))
        s3 = stack.enter_context(_closing(S3Server(in_process=False)))
        logdir = Path(tempfile.mkdtemp(prefix="s3batch-bench-topologies-"))
        stack.callback(shutil.rmtree, logdir, True)
        bucket = f"bench-topologies-{int(time.time())}"
        env = {
            "CELERY_BROKER_URL": results.url(0),
            "CELERY_RESULT_BACKEND": results.url(0),
            "S3BATCH_BUCKET": bucket,
            "S3BATCH_MAX_BATCH_AGE": "2",
            "AWS_ENDPOINT_URL": s3.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "NO_PROXY": "127.0.0.1,localhost",
        }
        clean_environment(env)
        s3_client(s3.endpoint_url).create_bucket(Bucket=bucket)
        masters = [f"redis://127.0.0.1:{node.port}/0" for node in cluster.masters()]
        plan = [("single node", single.url(0), [single.url(0)], 1)]
        plan += [("cluster", cluster.url, masters, lanes) for lanes in LANE_COUNTS]
        print(f"{objects:,} objects of {OBJECT_BYTES} B per run, {runs} run(s) each; 2 workers x 2 processes; "
              f"broker and results on their own redis-server; batch age 2 s")  # fmt: skip
        idle = [  # first: no worker has run yet that could add commands of its own
            run_idle_tick("single node", single.url(15), [single.url(0)], partitions, bucket),
            run_idle_tick("cluster", cluster.url, masters, partitions, bucket),
        ]
        throughput: list[Throughput] = []
        for topology, url, nodes, lanes in plan:
            done = []
            for run in range(runs):
                one = run_throughput(topology, url, nodes, lanes, objects, env, logdir)
                print(f"  {topology}, {lanes} lane(s), run {run + 1}: {one.objects_per_s:,.0f} objects/s, "
                      f"{one.staging_commands_per_object:.3f} staging commands/object, {one.tars} tars")  # fmt: skip
                done.append(one)
            throughput.append(median_run(done))

    print("\nBatcher.put_objects() end to end (median run):")
    print(f"{'topology':<12} {'lanes':>5} {'objects/s':>10} {'vs single':>9} {'cmds/object':>11} {'tars':>5}")
    base = throughput[0].objects_per_s
    for row in throughput:
        print(f"{row.topology:<12} {row.lanes:>5} {row.objects_per_s:>10,.0f} {row.objects_per_s / base:>8.2f}x "
              f"{row.staging_commands_per_object:>11.3f} {row.tars:>5}")  # fmt: skip
    print(f"\nA flush tick with nothing due among {partitions:,} partitions:")
    for tick in idle:
        print(f"{tick.topology:<12} {tick.commands_per_tick:.1f} Redis commands, {tick.ms_per_tick:.2f} ms per tick; "
              f"the once-a-minute sweep: {tick.sweep_commands:,} commands, {tick.sweep_s:.2f} s")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "objects_per_run": objects,
        "runs": runs,
        "object_bytes": OBJECT_BYTES,
        "throughput": [asdict(row) for row in throughput],
        "idle_tick": [asdict(tick) for tick in idle],
        "speedup_vs_single": {f"cluster {row.lanes}": row.objects_per_s / base for row in throughput[1:]},
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return 0


@contextmanager
def _closing(service: Any) -> Iterator[Any]:
    try:
        yield service
    finally:
        service.close()


if __name__ == "__main__":
    raise SystemExit(main())
