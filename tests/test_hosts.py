"""Several hosts (network namespaces): Redis, the S3 server, a beat, two workers and a producer each on a host of
their own. One worker's link is cut in the middle of a flush and restored later, the other is SIGKILLed and
replaced by a worker whose wall clock is minutes behind. Nothing is lost, nothing is in two tars, no tar is
overwritten, batch ids are unique, one producer's staging order is kept in the batches, and no lease is taken
over before it ends by the staging Redis's clock (batcher.clock).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
import redis

from batcher import BatchReader, BatchRef
from batcher.config import Settings
from batcher.connection import connect
from batcher.lanes import Lanes
from batcher.staging import Staging
from batcher.uploader import SHA256_METADATA
from tests.hostsproducer import body_of, key_of
from tests.services.faketime import faketime_env
from tests.services.netns import NetnsHosts, netns_available
from tests.services.processes import ChildProcess, wait_until

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.skipif(
    netns_available() is not None, reason=f"network namespaces cannot be made here: {netns_available()}"
)

ROOT = Path(__file__).resolve().parent.parent
HOSTS = ("redis", "s3", "beat", "worker1", "worker2", "producer")
REDIS_PORT, S3_PORT = 6379, 5000
BUCKET = "hosts"
PER_STREAM = 1500  # objects per producer stream (two streams)
SEND_SECONDS = 14.0
CUT_SECONDS = 10.0
# Behind, not ahead: a worker whose clock is ahead of beat's by more than a tick's expiry (5 s) drops every tick as
# expired (Celery compares the message's absolute `expires` with the worker's own clock), so it would flush only
# by chance during the cut (measured: the cut batch waited 14 s, until the cut worker came back). Behind, it takes
# ticks, and before batcher.clock it saw the cut worker's lease as live for 2 more minutes.
CLOCK_SHIFT = "-2m"
CUT_AT = "tar-built:3:sleep"  # tests/crashhooks.py: pause 3 s the 3rd time a flush of the worker gets there
KILL_AT = "uploaded:1:sleep"
SETTINGS = {
    "S3BATCH_BUCKET": BUCKET,
    "S3BATCH_MAX_BATCH_AGE": "1",
    "S3BATCH_MAX_BATCH_OBJECTS": "150",
    "S3BATCH_LEASE_SECONDS": "3",
}


@dataclass
class Cluster:
    """The hosts and what runs on them, with the environment every s3batch process there gets."""

    hosts: NetnsHosts
    logs: Path
    env: dict[str, str]
    workers: dict[str, ChildProcess] = field(default_factory=dict)

    def start_worker(self, host: str, name: str, **extra: str) -> ChildProcess:
        logfile = self.logs / f"{name}.log"
        argv = [
            sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-n", f"{name}@{host}", "-c", "2",
            "--loglevel=INFO", "--logfile", str(logfile), "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        process = self.hosts.popen(host, argv, env={**self.env, **extra}, label=f"worker {name} on {host}")
        self.workers[name] = process
        return process

    def wait_ready(self, name: str) -> float:
        logfile = self.logs / f"{name}.log"
        return wait_until(
            lambda: " ready." in logfile.read_text(errors="replace"),
            what=f"worker {name} to be ready", timeout_s=60, processes=[self.workers[name]], log=logfile,
        )  # fmt: skip

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def environment(hosts: NetnsHosts) -> dict[str, str]:
    """What every s3batch process in the hosts gets: the Redis and S3 hosts' addresses, fast settings."""
    redis_url = f"redis://{hosts.address('redis')}:{REDIS_PORT}/0"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3BATCH_", "CELERY_", "AWS_"))}
    env.update(
        SETTINGS,
        S3BATCH_REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        CELERY_RESULT_BACKEND=redis_url,
        AWS_ENDPOINT_URL=f"http://{hosts.address('s3')}:{S3_PORT}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        PYTHONPATH=str(ROOT),
    )
    return env


@contextlib.contextmanager
def cluster(logs: Path) -> Iterator[Cluster]:
    with NetnsHosts(HOSTS, gateway=True) as hosts:
        env = environment(hosts)
        redis_dir = logs / "redis"
        redis_dir.mkdir()
        server = hosts.popen("redis", [
            "redis-server", "--bind", "0.0.0.0", "--port", str(REDIS_PORT), "--protected-mode", "no",
            "--save", "", "--appendonly", "no", "--dir", str(redis_dir),
        ], label="redis-server")  # fmt: skip
        moto = hosts.popen(
            "s3", [sys.executable, "-m", "moto.server", "-H", "0.0.0.0", "-p", str(S3_PORT)], env=env, label="moto"
        )
        client = redis.Redis(host=hosts.address("redis"), port=REDIS_PORT, socket_timeout=5)
        wait_until(lambda: bool(client.ping()), what="redis-server in its host", timeout_s=20, processes=[server])
        client.close()
        s3_url = env["AWS_ENDPOINT_URL"]
        wait_until(lambda: urllib.request.urlopen(s3_url, timeout=2).status == 200,
                   what="moto in its host", timeout_s=30, processes=[moto])  # fmt: skip
        yield Cluster(hosts, logs, env)


def s3_client(env: dict[str, str]) -> S3Client:
    client: S3Client = boto3.client(
        "s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing", aws_secret_access_key="testing",
        region_name="us-east-1",
    )  # fmt: skip
    return client


class TakeoverWatch:
    """Polls the batches leased at a moment, and notes when each is taken over (again, if it already was) or gone
    (seconds after that moment)."""

    def __init__(self, staging: Staging, started: float) -> None:
        self.staging = staging
        self.started = started
        client, keys = staging.client, staging.keys
        self.batch_ids = [item.decode() for item in client.zrange(keys.leases, 0, -1)]
        pipe = client.pipeline(transaction=True)
        for batch_id in self.batch_ids:
            pipe.hget(keys.batch(batch_id), "takeovers")
        self._takeovers = {batch_id: int(n or 0) for batch_id, n in zip(self.batch_ids, pipe.execute(), strict=True)}
        self.taken_after_s: dict[str, float] = {}
        self.gone_after_s: dict[str, float] = {}
        self.lease_ends_ms: dict[str, float] = {}  # the last lease end seen before a takeover (Redis time)
        self.seen_taken_ms: dict[str, float] = {}  # Redis time when a takeover (or the end) was first seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client, keys = self.staging.client, self.staging.keys
        while not self._stop.is_set() and len(self.gone_after_s) < len(self.batch_ids):
            for batch_id in self.batch_ids:
                if batch_id in self.gone_after_s:
                    continue
                with contextlib.suppress(redis.RedisError):
                    pipe = client.pipeline(transaction=True)  # one moment: the lease, the batch and Redis's clock
                    pipe.zscore(keys.leases, batch_id).hget(keys.batch(batch_id), "takeovers")
                    pipe.exists(keys.batch(batch_id)).time()
                    lease_ends, takeovers, exists, (seconds, microseconds) = pipe.execute()
                    now = time.monotonic() - self.started
                    taken = int(takeovers or 0) > self._takeovers[batch_id]
                    if not taken and lease_ends is not None:
                        self.lease_ends_ms[batch_id] = lease_ends
                    redis_ms = seconds * 1000 + microseconds / 1000
                    if taken and batch_id not in self.taken_after_s:
                        self.taken_after_s[batch_id] = now
                        self.seen_taken_ms[batch_id] = redis_ms
                    if not exists:
                        self.gone_after_s[batch_id] = now
                        self.seen_taken_ms.setdefault(batch_id, redis_ms)  # a takeover too quick to be seen
            self._stop.wait(0.05)

    def early_ms(self, batch_id: str) -> float:
        """By how much ``batch_id`` was taken over before the end of its lease as last seen (Redis time; > 0: a
        live lease was taken over). Seen after the takeover, so never more than the truth."""
        return self.lease_ends_ms.get(batch_id, 0) - self.seen_taken_ms.get(batch_id, 0)

    def stop(self) -> None:
        """Stop polling (again: no-op)."""
        self._stop.set()
        self._thread.join()


def uploads(log: str) -> list[tuple[str, bool]]:
    """(batch id, recovered) of each "batch uploaded" line of a worker's log."""
    found = []
    for line in log.splitlines():
        if "s3batch batch uploaded batch_id=" in line:
            batch_id = line.split("batch_id=")[1].split()[0]
            found.append((batch_id, "recovered=True" in line))
    return found


def test_several_hosts_cut_kill_and_a_shifted_clock(tmp_path: Path) -> None:
    began = time.monotonic()
    with cluster(tmp_path) as c, contextlib.ExitStack() as cleanup:
        hosts, env = c.hosts, c.env
        s3 = s3_client(env)
        cleanup.callback(s3.close)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        settings = Settings.from_env(env)
        lanes = Lanes(connect(env["S3BATCH_REDIS_URL"]), settings)
        cleanup.callback(lanes.client.close)
        staging = lanes.default_lane()
        beat = hosts.popen("beat", [sys.executable, "-m", "celery", "-A", "workers.app", "beat", "--loglevel=INFO",
                                    "-s", str(tmp_path / "beat-schedule")], env=env, label="beat")  # fmt: skip
        # Each worker pauses 3 s at a point of a flush (tests/crashhooks.py); the test acts right there: worker1's
        # link is cut once the tar of its 3rd batch is built (before its upload), worker2 is SIGKILLed once its
        # first batch is in S3 (before any result is published).
        c.start_worker("worker1", "w1", S3BATCH_CELERY_CONFIG="tests.crash_config", S3BATCH_CRASH_AT=CUT_AT)
        c.start_worker("worker2", "w2", S3BATCH_CELERY_CONFIG="tests.crash_config", S3BATCH_CRASH_AT=KILL_AT)
        c.wait_ready("w1")
        c.wait_ready("w2")
        ready_s = time.monotonic() - began

        out = tmp_path / "producer"
        out.mkdir()
        producer = hosts.popen(
            "producer", [sys.executable, "-m", "tests.hostsproducer", str(out), str(PER_STREAM), str(SEND_SECONDS)],
            env=env, label="producer",
        )  # fmt: skip
        produce_began = time.monotonic()

        cut_watch: TakeoverWatch | None = None
        kill_watch: TakeoverWatch | None = None
        replaced_s: float | None = None
        deadline = time.monotonic() + 40
        while cut_watch is None or kill_watch is None:  # in whichever order the two points are reached
            assert time.monotonic() < deadline, f"not reached: {CUT_AT} on worker1 or {KILL_AT} on worker2"
            assert producer.alive(), producer.log_path.read_text()
            if cut_watch is None and f"S3BATCH_CRASH_AT={CUT_AT} reached" in c.log("w1"):
                cut_watch = TakeoverWatch(staging, time.monotonic())
                cleanup.callback(cut_watch.stop)
                hosts.cut("worker1")
            if kill_watch is None and f"S3BATCH_CRASH_AT={KILL_AT} reached" in c.log("w2"):
                kill_watch = TakeoverWatch(staging, time.monotonic())
                cleanup.callback(kill_watch.stop)
                c.workers["w2"].kill()  # SIGKILL to its process group, by PID
                # The replacement, its wall clock minutes ahead; it gets ready while the loop goes on.
                c.start_worker("worker2", "w3", **faketime_env(CLOCK_SHIFT))
            if kill_watch is not None and replaced_s is None and " ready." in c.log("w3"):
                replaced_s = time.monotonic() - kill_watch.started
            time.sleep(0.01)
        cut_at, killed_at = cut_watch.started, kill_watch.started
        c.wait_ready("w3")
        replaced_s = replaced_s or time.monotonic() - killed_at

        time.sleep(max(0.0, cut_at + CUT_SECONDS - time.monotonic()))
        hosts.restore("worker1")
        restored_at = time.monotonic()

        wait_until(lambda: not producer.alive(), what="the producer to get every result", timeout_s=120,
                   log=producer.log_path)  # fmt: skip
        assert producer.process.wait(timeout=10) == 0, producer.log_path.read_text()
        results_s = time.monotonic() - produce_began
        timing = json.loads((out / "timing.json").read_text())
        wait_until(lambda: _settled(staging), what="staging to be empty", timeout_s=60)
        cut_watch.stop()
        kill_watch.stop()
        for name in ("w1", "w3"):
            c.workers[name].stop(timeout_s=20)
        beat.stop()
        logs = {name: c.log(name) for name in ("w1", "w2", "w3")}

        accepted = {stream: (out / f"{stream}.ids").read_text().split() for stream in ("direct", "task")}
        refs = {stream: _refs(out / f"{stream}.refs") for stream in ("direct", "task")}
        checked = check_bucket(s3, accepted, refs)
        totals = staging.totals()

    recovered = {batch_id for log in logs.values() for batch_id, was in uploads(log) if was}
    leased_then = set(cut_watch.batch_ids) | set(kill_watch.batch_ids)
    stolen = recovered - leased_then
    print(
        f"\nseveral hosts: {sum(len(ids) for ids in accepted.values())} objects accepted "
        f"({PER_STREAM} Batcher, {PER_STREAM} delay()), all SUCCESS once, byte-exact; {checked['tars']} tars, "
        f"{checked['versions']} S3 versions; hosts and services ready in {ready_s:.1f} s; "
        f"worker1 cut for {restored_at - cut_at:.1f} s, {_held(cut_watch, recovered)}; "
        f"worker2 SIGKILLed {killed_at - cut_at:+.1f} s after the cut, {_held(kill_watch, recovered)}; "
        f"replacement with clock {CLOCK_SHIFT} ready {replaced_s:.1f} s after the kill; "
        f"{len(recovered)} batches uploaded by a takeover, {len(stolen)} of them live leases; "
        f"sending took {timing['sending_s']:.1f} s, every result {timing['results_after_last_send_s']:.1f} s after "
        f"the last send ({results_s:.1f} s after the producer started); lifetime counters {_counters(totals)}; "
        f"whole test {time.monotonic() - began:.1f} s"
    )
    for watch in (cut_watch, kill_watch):  # the batch the worker held when cut or killed, and any other then
        assert watch.batch_ids and set(watch.gone_after_s) == set(watch.batch_ids)
        taken = [batch_id for batch_id in watch.batch_ids if batch_id in recovered]
        assert taken, "the cut or killed worker's batch was not taken over"
        assert max(watch.gone_after_s[b] for b in taken) < CUT_SECONDS, "a batch waited for the cut worker"
        early = {batch_id: watch.early_ms(batch_id) for batch_id in taken if watch.early_ms(batch_id) > 0}
        assert not early, f"taken over this many ms before their lease ended (by Redis's clock): {early}"
    assert "lost the lease" in logs["w1"] or "taken over meanwhile" in logs["w1"], "worker1 was not cut mid-flush"
    assert not stolen, f"batches taken over while their holder was alive and renewing: {sorted(stolen)}"
    assert totals["dead_letters"] == 0 and totals["batches_in_flight"] == 0 and totals["staged_bytes"] == 0


def _settled(staging: Staging) -> bool:
    totals = staging.totals()
    return (totals["staged_bytes"], totals["batches_in_flight"], totals["dead_letters"]) == (0, 0, 0)


def _refs(path: Path) -> dict[str, BatchRef]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {row["id"]: BatchRef.from_dict(row["ref"]) for row in rows}


def _held(watch: TakeoverWatch, recovered: set[str]) -> str:
    """The batches leased at ``watch``'s moment (any worker's), and when those taken over were finished."""
    taken = [batch_id for batch_id in watch.batch_ids if batch_id in recovered]
    gone = ", ".join(f"{watch.gone_after_s[b]:.1f}" for b in taken if b in watch.gone_after_s) or "-"
    margin = ", ".join(f"{-watch.early_ms(b) / 1000:.1f}" for b in taken if b in watch.lease_ends_ms) or "-"
    return (
        f"{len(watch.batch_ids)} batches leased then, {len(taken)} finished by a takeover after {gone} s "
        f"({margin} s after its lease ended)"
    )


def _counters(totals: dict[str, int]) -> dict[str, int]:
    names = ("uploaded_batches", "uploaded_objects", "failed_rounds", "lost_objects")
    return {name: totals.get(name, 0) for name in names}


def check_bucket(s3: S3Client, accepted: dict[str, list[str]], refs: dict[str, dict[str, BatchRef]]) -> dict[str, int]:
    """Every accepted object byte-exact in exactly one tar; tars never overwritten, batch ids unique; the direct
    stream in send order."""
    versions: dict[str, int] = {}  # the tars' (each worker's first upload also puts and deletes a probe object)
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=BUCKET):
        assert not [marker["Key"] for marker in page.get("DeleteMarkers", []) if marker["Key"].endswith(".tar")]
        for version in page.get("Versions", []):
            if version["Key"].endswith(".tar"):
                versions[version["Key"]] = versions.get(version["Key"], 0) + 1
    assert versions and set(versions.values()) == {1}, "a tar was written twice (more than one version)"

    reader = BatchReader(s3)
    tars: dict[str, bytes] = {}
    placed: dict[str, tuple[str, int]] = {}  # object key -> (tar, offset)
    batch_ids: list[str] = []
    for key in sorted(versions):
        got = s3.get_object(Bucket=BUCKET, Key=key)
        tars[key] = got["Body"].read()
        assert got["Metadata"][SHA256_METADATA] == hashlib.sha256(tars[key]).hexdigest(), key
        index = reader.index(BUCKET, key)
        batch_ids.append(index.batch_id)
        assert key.endswith(f"/{index.batch_id}.tar")
        for info in index.objects:
            assert info.ref.object_key not in placed, f"{info.ref.object_key} is in two tars"
            placed[info.ref.object_key] = (key, info.ref.offset)
    assert len(batch_ids) == len(set(batch_ids)), "a batch id was used twice"

    for stream, ids in accepted.items():
        assert len(ids) == PER_STREAM == len(set(ids))
        assert set(refs[stream]) == set(ids), f"{stream}: accepted objects without a SUCCESS"
        for i, record_id in enumerate(ids):
            ref, body = refs[stream][record_id], body_of(stream, i)
            assert ref.object_key == key_of(stream, i)
            assert (ref.key, ref.offset) == placed[ref.object_key]
            assert tars[ref.key][ref.offset : ref.offset + ref.size] == body, ref
            assert ref.sha256 == hashlib.sha256(body).hexdigest()
    assert len(placed) == sum(len(ids) for ids in accepted.values()), "an object nobody sent is in a tar"

    # One producer's Batcher objects, in send order: each batch holds a run of them at increasing offsets, and
    # a batch never comes back after the next one started.
    order = [refs["direct"][record_id] for record_id in accepted["direct"]]
    finished: set[str] = set()
    for before, ref in itertools.pairwise(order):
        if ref.batch_id == before.batch_id:
            assert ref.offset > before.offset, (before, ref)
        else:
            finished.add(before.batch_id)
            assert ref.batch_id not in finished, f"{ref.object_key}: staging order broken across batches"
    return {"tars": len(tars), "versions": sum(versions.values())}
