"""The suite's scenarios: each one runs once per suite run and returns its outcomes by name.

Every s3batch run starts with an empty bucket and empties it afterwards, so its PutObject calls are exactly
the tars in the bucket, and reads a sample back by ranged GET (BenchError if a byte differs).
"""

from __future__ import annotations

import dataclasses
import os
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batcher.config import Settings
from batcher.uploader import MULTIPART_THRESHOLD_BYTES
from bench.buckets import delete_keys, listing, s3_client
from bench.celery_runs import (
    Sent,
    date_done_by_id,
    forget,
    percentile,
    put_with_batcher,
    result_drainer,
    send_each,
    send_paced,
)
from bench.checks import BenchError, tars_of_run, verify_sample
from bench.flush_batch import run_flush
from bench.naive import run_naive
from bench.outcome import Outcome
from bench.services import Services
from tests.services.rabbit import RabbitMQ, rabbitmq_available
from workers.celery_internals import forget_broker_connections

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class SizePlan:
    """Objects per run of each method for one object size."""

    size: int
    naive: int
    delay: int
    batcher: int

    @property
    def label(self) -> str:
        return size_label(self.size)


@dataclass(frozen=True)
class Plan:
    """How much each scenario sends per run."""

    naive_objects: int = 2_000
    noop_objects: int = 10_000
    delay_objects: int = 10_000
    batcher_objects: int = 50_000  # several batches, so that staging and flushing overlap as in steady use
    paced_rate_per_s: float = 500
    paced_seconds: float = 30
    flush_objects: int = 128
    flush_object_bytes: int = 4 * MIB
    sizes: tuple[SizePlan, ...] = (
        SizePlan(100, naive=2_000, delay=5_000, batcher=50_000),
        SizePlan(10 * KIB, naive=2_000, delay=5_000, batcher=20_000),
        SizePlan(MIB, naive=300, delay=300, batcher=300),
    )


QUICK_PLAN = Plan(
    naive_objects=300,
    noop_objects=1_000,
    delay_objects=1_000,
    batcher_objects=10_000,
    paced_seconds=8,
    sizes=(
        SizePlan(100, naive=300, delay=600, batcher=5_000),
        SizePlan(10 * KIB, naive=300, delay=600, batcher=5_000),
        SizePlan(MIB, naive=40, delay=40, batcher=40),
    ),
)


@dataclass
class Bench:
    """What every scenario needs: the services, the Celery app and tasks, the Batcher class (None if absent)."""

    services: Services
    app: Any
    put_object: Any
    noop: Any
    batcher_cls: Any | None
    settings: Settings
    plan: Plan
    verify: int
    client: Any = field(init=False)

    def __post_init__(self) -> None:
        self.client = self.services.client()

    def timeout_s(self, objects: int) -> float:
        """Generous: the slowest path is a few hundred objects a second, plus the last batch's age."""
        return 120 + objects / 20 + 3 * self.settings.max_batch_age_s


def size_label(size: int) -> str:
    """100 B, 10 KiB, 1 MiB."""
    for unit, factor in (("MiB", MIB), ("KiB", KIB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def make_bodies(count: int, size: int, seed: int) -> list[bytes]:
    """Distinct pseudo-random bodies, so that a wrong range can never return the right bytes by chance."""
    rng = random.Random(seed)
    return [rng.randbytes(size) for _ in range(count)]


def workload(name: str, run: int, count: int, size: int) -> tuple[list[str], list[bytes]]:
    """Keys unique to this scenario and run, and distinct bodies."""
    keys = [f"{name}/r{run}/{i:08d}" for i in range(count)]
    return keys, make_bodies(count, size, seed=zlib.crc32(f"{name}/{run}".encode()))


def finish_s3batch_run(bench: Bench, what: str, sent: Sent, keys: list[str], bodies: list[bytes]) -> Outcome:
    """Count the run's tars, verify a sample by ranged GET, empty the bucket; raises BenchError.

    The details tell where the time went: sending, then each result's ``date_done`` (when the flush stored
    SUCCESS) after its send, and the first and last of them after the first send.
    """
    tars = tars_of_run(bench.client, bench.services.bucket, sent.values, what, MULTIPART_THRESHOLD_BYTES)
    verified = verify_sample(bench.client, sent.values, keys, bodies, bench.verify, what)
    delete_keys(bench.client, bench.services.bucket, list(tars))
    done = date_done_by_id(sent.results)
    waited = [done[r.id] - at for r, at in zip(sent.results, sent.sent_at, strict=True)]
    forget(sent)
    return Outcome(
        objects=len(keys),
        payload_bytes=sum(map(len, bodies)),
        seconds=sent.seconds,
        put_calls=len(tars),
        verified=verified,
        details={
            "send_seconds": round(sent.send_seconds, 4),
            "first_success_s": round(min(done.values()) - sent.sent_at[0], 4),
            "last_success_s": round(max(done.values()) - sent.sent_at[0], 4),
            "latency_p50_s": round(percentile(waited, 50), 4),
            "latency_p99_s": round(percentile(waited, 99), 4),
            "latency_max_s": round(max(waited), 4),
            "tar_bytes": sum(tars.values()),
        },
    )


def start_s3batch_run(bench: Bench, what: str) -> None:
    """Raises BenchError if the bucket is not empty (a count would then include another run's tars)."""
    left = listing(bench.client, bench.services.bucket)
    if left:
        raise BenchError(f"{what}: the bucket still holds {len(left)} tars from an earlier run")


def naive_runs(bench: Bench, run: int) -> dict[str, Outcome]:
    """Scenario 1: one PutObject per 1 KiB object, 1 thread and 16 threads."""
    out = {}
    for threads in (1, 16):
        _, bodies = workload(f"naive{threads}", run, bench.plan.naive_objects, KIB)
        out[f"naive{threads}"] = run_naive(
            bench.services.endpoint_url, own_bucket(bench, "naive"), bodies, threads, prefix=f"naive{threads}/r{run}/"
        )
    return out


def own_bucket(bench: Bench, suffix: str) -> str:
    """A bucket of the suite's next to the workers' one (naive runs, the flush), created on first use."""
    name = f"{bench.services.bucket}-{suffix}"
    if name not in {b["Name"] for b in bench.client.list_buckets()["Buckets"]}:
        bench.client.create_bucket(Bucket=name)
    return name


def noop_run(bench: Bench, run: int) -> dict[str, Outcome]:
    """Scenario 2: a task that does nothing, same message, same workers: the ceiling of one task per object."""
    keys, bodies = workload("noop", run, bench.plan.noop_objects, KIB)
    sent = send_each(bench.noop, keys, bodies, bench.timeout_s(len(keys)), "no-op task")
    if any(value is not None for value in sent.values):
        raise BenchError("no-op task: a result is not None")
    forget(sent)
    outcome = Outcome(len(keys), len(keys) * KIB, sent.seconds, details={"send_seconds": round(sent.send_seconds, 4)})
    return {"noop": outcome}


def delay_run(bench: Bench, run: int, name: str = "delay", count: int | None = None, size: int = KIB) -> Outcome:
    """``put_object.delay()`` for every object until every result is SUCCESS (scenarios 3 and 7)."""
    what = f"put_object.delay() {size_label(size)}"
    start_s3batch_run(bench, what)
    keys, bodies = workload(name, run, count or bench.plan.delay_objects, size)
    sent = send_each(bench.put_object, keys, bodies, bench.timeout_s(len(keys)), what)
    return finish_s3batch_run(bench, what, sent, keys, bodies)


def batcher_run(bench: Bench, run: int, name: str = "batcher", count: int | None = None, size: int = KIB) -> Outcome:
    """``Batcher.put_objects()`` until every result is ready (scenarios 4 and 7)."""
    assert bench.batcher_cls is not None
    what = f"Batcher.put_objects() {size_label(size)}"
    start_s3batch_run(bench, what)
    keys, bodies = workload(name, run, count or bench.plan.batcher_objects, size)
    batcher = bench.batcher_cls(bench.settings)
    try:
        sent = put_with_batcher(batcher, keys, bodies, bench.timeout_s(len(keys)), what)
    finally:
        batcher.close()
    return finish_s3batch_run(bench, what, sent, keys, bodies)


def paced_run(bench: Bench, run: int) -> dict[str, Outcome]:
    """Scenario 5: delay() -> SUCCESS latency at a steady rate, from send time to the result's date_done."""
    plan = bench.plan
    what = f"put_object.delay() paced at {plan.paced_rate_per_s:g}/s"
    start_s3batch_run(bench, what)
    keys, bodies = workload("paced", run, round(plan.paced_rate_per_s * plan.paced_seconds), KIB)
    drain = result_drainer(bench.app)
    sent = send_paced(
        bench.put_object, keys, bodies, plan.paced_rate_per_s, bench.timeout_s(len(keys)), what, drain=drain
    )
    outcome = finish_s3batch_run(bench, what, sent, keys, bodies)
    outcome.details["achieved_rate_per_s"] = round(len(keys) / sent.send_seconds, 1)
    return {"paced": outcome}


def flush_run(bench: Bench, run: int) -> dict[str, Outcome]:
    """Scenario 6: one big batch staged in a Redis database no worker reads, flushed by a fresh process."""
    plan = bench.plan
    outcome = run_flush(
        redis_url=bench.services.redis_url(1),
        endpoint_url=bench.services.endpoint_url,
        bucket=own_bucket(bench, "flush"),
        objects=plan.flush_objects,
        object_bytes=plan.flush_object_bytes,
        run=run,
        env=bench.services.env,
        client=bench.client,
    )
    return {"flush": outcome}


def size_runs(bench: Bench, run: int) -> dict[str, Outcome]:
    """Scenario 7: naive 16 threads vs delay() vs Batcher.put_objects() for each object size."""
    out = {}
    for plan in bench.plan.sizes:
        tag = f"size{plan.size}"
        _, bodies = workload(f"{tag}-naive", run, plan.naive, plan.size)
        out[f"{tag}.naive16"] = run_naive(
            bench.services.endpoint_url, own_bucket(bench, "naive"), bodies, 16, prefix=f"{tag}-naive/r{run}/"
        )
        del bodies
        out[f"{tag}.delay"] = delay_run(bench, run, f"{tag}-delay", plan.delay, plan.size)
        if bench.batcher_cls is not None:
            out[f"{tag}.batcher"] = batcher_run(bench, run, f"{tag}-batcher", plan.batcher, plan.size)
    return out


def seaweedfs_runs(bench: Bench, run: int) -> dict[str, Outcome]:
    """Scenario 8: scenarios 1, 3 and 4 on SeaweedFS, a real S3 server, in the same run as on moto.

    The workers are restarted pointed at SeaweedFS (same bucket name, so the producer's settings hold), and
    pointed back at moto afterwards, so that the scenarios after this one still measure moto.
    """
    seaweed = bench.services.seaweed()
    credentials = {"aws_access_key_id": seaweed.access_key, "aws_secret_access_key": seaweed.secret_key}
    on_seaweed = dataclasses.replace(bench)  # the same plan and tasks; its S3 client is SeaweedFS's below
    on_seaweed.client = s3_client(seaweed.endpoint_url, credentials)
    naive_bucket = f"{bench.services.bucket}-naive"
    if naive_bucket not in {b["Name"] for b in on_seaweed.client.list_buckets()["Buckets"]}:
        on_seaweed.client.create_bucket(Bucket=naive_bucket)
    out = {}
    for threads in (1, 16):
        name = f"seaweedfs-naive{threads}"
        _, bodies = workload(name, run, bench.plan.naive_objects, KIB)
        out[f"seaweedfs.naive{threads}"] = run_naive(
            seaweed.endpoint_url, naive_bucket, bodies, threads, prefix=f"{name}/r{run}/", credentials=credentials
        )
    # Only AWS_ENDPOINT_URL is set (bench/services.py clears AWS_ENDPOINT_URL_S3, which would win over it).
    s3_env = {
        "AWS_ENDPOINT_URL": seaweed.endpoint_url,
        "AWS_ACCESS_KEY_ID": seaweed.access_key,
        "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
    }
    bench.services.restart_workers(bench.app, s3_env)
    try:
        out["seaweedfs.delay"] = delay_run(on_seaweed, run, "seaweedfs-delay")
        if bench.batcher_cls is not None:
            out["seaweedfs.batcher"] = batcher_run(on_seaweed, run, "seaweedfs-batcher")
    finally:
        bench.services.restart_workers(bench.app)
    return out


def rabbitmq_runs(bench: Bench, run: int) -> dict[str, Outcome]:
    """Scenario 9: scenario 3 (``put_object.delay()``) with RabbitMQ as the broker, in the same run as on Redis.

    A fresh vhost on the local RabbitMQ node (the tests' launcher) carries the put_object messages of the producer
    and of the restarted workers, as ``CELERY_BROKER_URL`` (which Celery reads before its own setting); staging
    and results stay on Redis. Producer and workers go back to Redis afterwards.
    """
    reason = rabbitmq_available()
    if reason is not None:
        raise BenchError(f"scenario rabbitmq: RabbitMQ cannot run here: {reason}")
    with RabbitMQ() as rabbit:
        redis_broker = os.environ["CELERY_BROKER_URL"]
        os.environ["CELERY_BROKER_URL"] = rabbit.url
        forget_broker_connections(bench.app)
        try:
            bench.services.restart_workers(bench.app, {"CELERY_BROKER_URL": rabbit.url})
            return {"rabbitmq.delay": delay_run(bench, run, "rabbitmq-delay")}
        finally:
            os.environ["CELERY_BROKER_URL"] = redis_broker
            forget_broker_connections(bench.app)  # before the vhost (and the connections to it) goes
            bench.services.restart_workers(bench.app)


Scenario = Callable[[Bench, int], dict[str, Outcome]]

SCENARIOS: dict[str, Scenario] = {
    "naive": naive_runs,
    "noop": noop_run,
    "delay": lambda bench, run: {"delay": delay_run(bench, run)},
    "batcher": lambda bench, run: {"batcher": batcher_run(bench, run)} if bench.batcher_cls else {},
    "paced": paced_run,
    "flush": flush_run,
    "sizes": size_runs,
    "seaweedfs": seaweedfs_runs,
    "rabbitmq": rabbitmq_runs,
}
