"""Nothing lost: real workers upload through a proxy that breaks S3 requests.

The workers talk to the S3 server (moto, and SeaweedFS for the tests marked s3_servers) through
tests/faultproxy.py (AWS_ENDPOINT_URL points at it); the test's own S3 client talks to the server directly,
so every check reads what S3 really holds.

The faults whose outcome depends on what the server stored run on moto and SeaweedFS (``s3_servers``):
transient faults in the middle of uploads, PUT answers cut after the server stored the tar (the retry must
meet 412) or inside their headers. The others are decided by the proxy alone (a refused or denied request
never reaches the server) and run on moto.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import random
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from celery.result import AsyncResult, ResultSet

from batcher.embedded import S3Server
from batcher.errors import DeadLetterError
from batcher.index import is_reserved
from tests.faultproxy import TRANSIENT_KINDS, FaultProxy
from tests.s3backends import S3Backend
from tests.support import Stack

SMALL_BATCHES: dict[str, Any] = {
    "S3BATCH_MAX_BATCH_OBJECTS": 100,
    "S3BATCH_MAX_BATCH_AGE": 1,
    "S3BATCH_LEASE_SECONDS": 2,
    # moto stores what arrives without checking checksums: read every batch back, without the probe that
    # would find that out (its PUT would count among the faults these tests count exactly)
    "S3BATCH_VERIFY_UPLOADS": "always",
}
Sent = list[tuple[str, bytes, "AsyncResult[Any]"]]


@pytest.fixture
def proxy(s3_backend: S3Backend) -> Iterator[FaultProxy]:
    """Request it before ``stack``, so that the workers stop before the proxy does."""
    with FaultProxy(s3_backend.endpoint_url, seed=20240611) as fault_proxy:
        yield fault_proxy


def send(count: int, prefix: str, seed: int) -> Sent:
    from workers.tasks import put_object

    rng = random.Random(seed)
    sent = []
    for i in range(count):
        key = f"{prefix}/{i % 13}/object-{i:05d}.bin"
        body = rng.randbytes(rng.choice([0, 1, 100, 511, 512, 513, 1024, 3000]))
        sent.append((key, body, put_object.delay(key, body)))
    return sent


def fresh(result: AsyncResult[Any]) -> AsyncResult[Any]:
    """A new AsyncResult for the same task: an old one may keep a FAILURE it has already read."""
    from workers.app import app

    return AsyncResult(result.id, app=app)


def wait_states(sent: Sent, state: str, timeout_s: float) -> None:
    """Poll until every task is in ``state``; fails naming how many are in which state."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = [fresh(r).state for _, _, r in sent]
        if all(s == state for s in states) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    counts = {s: states.count(s) for s in set(states)}
    assert counts == {state: len(sent)}, counts


def wait_success(sent: Sent, timeout_s: float) -> list[dict[str, Any]]:
    ResultSet([r for _, _, r in sent]).join_native(timeout=timeout_s)
    return [r.get(timeout=1) for _, _, r in sent]


def check_landed(stack: Stack, sent: Sent, payloads: list[dict[str, Any]]) -> tuple[int, int]:
    """Exact bytes by ranged GET, every object in exactly one tar, each tar's ETag as published.

    Returns (objects lost, tars); asserts after the caller has had a chance to print.
    """
    bucket = stack.settings.require_bucket()

    def exact(item: tuple[tuple[str, bytes, AsyncResult[Any]], dict[str, Any]]) -> bool:
        (key, body, _), p = item
        if p["object_key"] != key or p["size"] != len(body) or p["sha256"] != hashlib.sha256(body).hexdigest():
            return False
        if not body:
            return not p["range"]
        raw = stack.s3.get_object(Bucket=bucket, Key=p["key"], Range=p["range"])["Body"].read()
        return bool(raw == body)

    with ThreadPoolExecutor(8) as pool:
        lost = sum(not ok for ok in pool.map(exact, zip(sent, payloads, strict=True)))

    tars = stack.batch_keys()
    assert tars == sorted({p["key"] for p in payloads})  # no tar without a result, no result without its tar
    members: list[tuple[str, int]] = []
    for tar_key in tars:
        obj = stack.s3.get_object(Bucket=bucket, Key=tar_key)
        assert {p["etag"] for p in payloads if p["key"] == tar_key} == {obj["ETag"]}  # never overwritten
        with tarfile.open(fileobj=io.BytesIO(obj["Body"].read())) as tar:
            members += [(tar_key, m.offset_data) for m in tar.getmembers() if not is_reserved(m.name)]
    assert len(members) == len(set(members)) == len(sent)  # every object in exactly one tar
    assert set(members) == {(p["key"], p["offset"]) for p in payloads}
    return lost, len(tars)


def report(name: str, objects: int, lost: int, tars: int, proxy: FaultProxy, started: float) -> None:
    stats = proxy.stats()
    print(
        f"\n[{name}] objects checked={objects} lost={lost} tars={tars} faults={stats['faults']} "
        f"requests={stats['by_method']} upstream={stats['upstream_statuses']} "
        f"seconds={time.monotonic() - started:.1f}"
    )


def flush_crashes(stack: Stack) -> list[str]:
    """Log lines of tasks that died of an exception (an upload failure must be handled, not raised)."""
    return [line for w in stack.workers for line in w.log().splitlines() if "raised unexpected" in line]


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("s3batch")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "batcher.cli"]
    return subprocess.run(command + list(args), env=stack.env(), capture_output=True, text=True, timeout=60)


def dead_letters(stack: Stack) -> list[dict[str, str]]:
    listed = cli(stack, "dead-letters", "--json")
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]


def test_proxy_forwards_faithfully_and_breaks_what_it_is_told(s3_server: S3Server, stack: Stack) -> None:
    bucket = stack.settings.require_bucket()
    with FaultProxy(s3_server.endpoint_url, seed=1, stall_s=0.2) as proxy:

        def call(method: str, path: str, body: Any = None, **headers: str) -> tuple[int, dict[str, str], bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            try:
                conn.request(method, path, body=body, headers=headers, encode_chunked=not isinstance(body, bytes))
                response = conn.getresponse()
                return response.status, dict(response.getheaders()), response.read()
            finally:
                conn.close()

        chunks = [b"first chunk ", b"", b"x" * 70_000, b" last"]  # a chunked body, forwarded raw
        status, _, _ = call("PUT", f"/{bucket}/chunked?x-id=PutObject", iter(chunks), **{"x-amz-meta-who": "me"})
        assert status == 200
        stored = stack.s3.get_object(Bucket=bucket, Key="chunked")
        assert stored["Body"].read() == b"".join(chunks) and stored["Metadata"] == {"who": "me"}
        signed = boto3.client("s3", endpoint_url=proxy.url, config=Config(retries={"total_max_attempts": 1}))
        ranged = signed.get_object(Bucket=bucket, Key="chunked", Range="bytes=6-10")
        assert ranged["Body"].read() == b"chunk" and ranged["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert ranged["ResponseMetadata"]["HTTPHeaders"]["connection"] == "close"
        assert signed.head_object(Bucket=bucket, Key="chunked")["ETag"] == stored["ETag"]
        signed.put_object(Bucket=bucket, Key="signed", Body=io.BytesIO(b"y" * 3_000_000))  # Expect: 100-continue
        assert stack.tar_bytes("signed") == b"y" * 3_000_000
        status, _, _ = call("PUT", f"/{bucket}/plain", b"plain body", **{"Expect": "100-continue"})
        assert status == 200 and stack.tar_bytes("plain") == b"plain body"

        proxy.configure(rate=1.0, kinds=["503", "500", "403"], methods=["GET"])
        codes = sorted(call("GET", f"/{bucket}/plain")[2].split(b"<Code>")[1].split(b"<")[0] for _ in range(3))
        assert codes == [b"AccessDenied", b"InternalError", b"SlowDown"]
        assert signed.head_object(Bucket=bucket, Key="plain")["ContentLength"] == 10  # other methods pass
        for kind in ("reset", "stall"):
            proxy.configure(rate=1.0, kinds=[kind])
            with pytest.raises(ConnectionResetError):
                call("GET", f"/{bucket}/plain")
        proxy.configure(rate=1.0, kinds=["truncate"])
        with pytest.raises(http.client.BadStatusLine):
            call("PUT", f"/{bucket}/truncated", b"stored anyway")
        assert stack.s3.get_object(Bucket=bucket, Key="truncated")["Body"].read() == b"stored anyway"
        proxy.configure(rate=1.0, kinds=["503"], for_s=0.3)
        assert call("GET", f"/{bucket}/plain")[0] == 503
        time.sleep(0.3)
        assert signed.get_object(Bucket=bucket, Key="plain")["Body"].read() == b"plain body"  # the window is over
        stats = proxy.stats()
        assert stats["faults"] == {"reset": 1, "503": 2, "500": 1, "stall": 1, "truncate": 1, "403": 1}
        assert stats["requests"] == 14 and stats["proxy_errors"] == 0


@pytest.mark.s3_servers
def test_transient_faults_on_two_in_five_uploads_lose_nothing(proxy: FaultProxy, stack: Stack) -> None:
    started = time.monotonic()
    stack.start_worker(concurrency=4, AWS_ENDPOINT_URL=proxy.url, **SMALL_BATCHES)
    proxy.configure(rate=0.4, kinds=TRANSIENT_KINDS, methods=["PUT", "POST"])
    sent = send(1500, "transient", seed=1)
    try:
        payloads = wait_success(sent, timeout_s=120)
    finally:
        proxy.disable()
    lost, tars = check_landed(stack, sent, payloads)
    report("transient 40%", len(sent), lost, tars, proxy, started)
    assert lost == 0
    faults = proxy.stats()["faults"]
    assert all(faults.get(kind, 0) > 0 for kind in TRANSIENT_KINDS), faults
    assert flush_crashes(stack) == []
    totals = stack.staging.totals()
    assert (totals["staged_bytes"], totals["dead_letters"], totals["batches_in_flight"]) == (0, 0, 0)


def test_four_seconds_of_total_outage_then_recovery(proxy: FaultProxy, stack: Stack) -> None:
    started = time.monotonic()
    stack.start_worker(concurrency=4, AWS_ENDPOINT_URL=proxy.url, **SMALL_BATCHES)
    outage_s = 4.0
    proxy.configure(rate=1.0, kinds=["reset", "503"], for_s=outage_s)
    outage_ends = time.monotonic() + outage_s
    sent = send(300, "outage", seed=2)
    # Wait until the outage has refused uploads (a batch is due after 1 s), then check nothing got through.
    deadline = time.monotonic() + outage_s
    while sum(proxy.stats()["faults"].values()) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert time.monotonic() < outage_ends - 0.1, "the outage ended before uploads were refused"
    assert stack.batch_keys() == []
    payloads = wait_success(sent, timeout_s=90)
    lost, tars = check_landed(stack, sent, payloads)
    report("outage 4 s", len(sent), lost, tars, proxy, started)
    assert lost == 0
    faults = proxy.stats()["faults"]
    assert faults.get("reset", 0) > 0 and faults.get("503", 0) > 0, faults
    assert flush_crashes(stack) == []
    assert stack.staging.totals()["dead_letters"] == 0


def test_outage_longer_than_botocore_retries_is_ridden_out_by_the_flush_backoff(
    proxy: FaultProxy, stack: Stack
) -> None:
    started = time.monotonic()
    worker = stack.start_worker(concurrency=4, AWS_ENDPOINT_URL=proxy.url, **SMALL_BATCHES)
    proxy.configure(rate=1.0, kinds=["reset", "503"])
    sent = send(200, "long-outage", seed=6)
    # S3 stays down until a flush has spent botocore's attempts on a batch and held it back.
    deadline = time.monotonic() + 60
    while "upload round 1 failed" not in worker.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    proxy.disable()
    assert "upload round 1 failed" in worker.log()
    assert stack.batch_keys() == []
    payloads = wait_success(sent, timeout_s=60)
    lost, tars = check_landed(stack, sent, payloads)
    report("outage past botocore's retries", len(sent), lost, tars, proxy, started)
    assert lost == 0
    assert "recovered=True" in worker.log()  # a later flush took the held-back batch and uploaded it
    assert stack.staging.totals()["dead_letters"] == 0
    assert flush_crashes(stack) == []


def test_access_denied_dead_letters_then_retry_all_lands_everything(proxy: FaultProxy, stack: Stack) -> None:
    started = time.monotonic()
    stack.start_worker(AWS_ENDPOINT_URL=proxy.url, **SMALL_BATCHES)
    proxy.configure(rate=1.0, kinds=["403"], methods=["PUT"])
    sent = send(150, "denied", seed=3)  # a batch of 100 by count, the rest by age
    wait_states(sent, "FAILURE", timeout_s=30)

    dead = dead_letters(stack)
    dead_ids = {row["batch_id"] for row in dead}
    assert sum(int(row["objects"]) for row in dead) == len(sent)
    assert all("AccessDenied" in row["last_error"] for row in dead), dead
    failed_in: dict[str, str] = {}  # task id -> the batch its error names
    for _, _, result in sent:
        with pytest.raises(DeadLetterError, match="AccessDenied") as error:
            fresh(result).get(timeout=5)
        named = [batch_id for batch_id in dead_ids if f"batch {batch_id} " in str(error.value)]
        assert len(named) == 1, str(error.value)
        failed_in[result.id] = named[0]
    assert set(failed_in.values()) == dead_ids
    totals = stack.staging.totals()
    assert totals["staged_bytes"] > 0 and totals["dead_letters"] == len(dead_ids)
    assert stack.batch_keys() == []
    denied = proxy.stats()["faults"]["403"]
    assert denied == len(dead_ids)  # permanent: one PUT per batch, no retry

    proxy.disable()
    retried = cli(stack, "retry", "--all")
    assert retried.returncode == 0, retried.stderr
    assert sorted(line.split(":")[0] for line in retried.stdout.splitlines()) == sorted(dead_ids)
    wait_states(sent, "SUCCESS", timeout_s=30)
    payloads = [fresh(r).get(timeout=5) for _, _, r in sent]
    assert all(p["batch_id"] == failed_in[r.id] for (_, _, r), p in zip(sent, payloads, strict=True))
    lost, tars = check_landed(stack, sent, payloads)
    report("403 then retry --all", len(sent), lost, tars, proxy, started)
    assert lost == 0
    assert dead_letters(stack) == []
    assert stack.staging.totals()["staged_bytes"] == 0
    assert flush_crashes(stack) == []


@pytest.mark.s3_servers
def test_truncated_put_responses_find_the_stored_tar_and_never_overwrite(proxy: FaultProxy, stack: Stack) -> None:
    started = time.monotonic()
    worker = stack.start_worker(concurrency=4, AWS_ENDPOINT_URL=proxy.url, **SMALL_BATCHES)
    # Every batch's first PutObject is stored by moto and its answer cut short; the retry gets 412.
    proxy.configure(rate=1.0, kinds=["truncate"], methods=["PUT"], max_per_path=1)
    sent = send(300, "truncated", seed=4)
    try:
        payloads = wait_success(sent, timeout_s=60)
    finally:
        proxy.disable()
    lost, tars = check_landed(stack, sent, payloads)
    report("truncated PUT", len(sent), lost, tars, proxy, started)
    assert lost == 0
    stats = proxy.stats()
    assert stats["faults"] == {"truncate": tars}
    assert stats["upstream_statuses"].get(412) == tars  # each retry met the stored tar, none overwrote it
    assert flush_crashes(stack) == []
    assert "recovered=True" not in worker.log()  # the uploader itself saw it through, no lease ran out


@pytest.mark.s3_servers
def test_put_answers_cut_inside_their_headers_never_publish_a_wrong_etag(proxy: FaultProxy, stack: Stack) -> None:
    """http.client reads a head cut after the status code as a 200 with fewer headers: no ETag, or half of it."""
    started = time.monotonic()
    worker = stack.start_worker(concurrency=4, AWS_ENDPOINT_URL=proxy.url, **SMALL_BATCHES)
    proxy.configure(rate=1.0, kinds=["truncate"], methods=["PUT"], max_per_path=1, truncate_in="head")
    sent = send(600, "cut-head", seed=5)
    try:
        payloads = wait_success(sent, timeout_s=60)
    finally:
        proxy.disable()
    lost, tars = check_landed(stack, sent, payloads)  # asserts each tar's ETag is the one published
    report("PUT answers cut in the head", len(sent), lost, tars, proxy, started)
    assert lost == 0
    assert proxy.stats()["faults"] == {"truncate": tars}
    assert flush_crashes(stack) == []
    assert "recovered=True" not in worker.log()
