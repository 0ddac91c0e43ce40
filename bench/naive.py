"""The baseline s3batch is measured against: a plain boto3 loop, one PutObject per object."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from bench.buckets import delete_keys, listing, s3_client
from bench.checks import BenchError
from bench.outcome import Outcome


def run_naive(
    endpoint_url: str,
    bucket: str,
    bodies: Sequence[bytes],
    threads: int,
    prefix: str,
    credentials: dict[str, str] | None = None,
) -> Outcome:
    """PutObject of every body from ``threads`` threads (a client each); raises BenchError if one is missing.

    The objects are deleted afterwards, so that the server's memory and listings do not grow across runs.
    ``credentials`` are boto3 client arguments for a server other than the environment's (SeaweedFS).
    """
    clients = [s3_client(endpoint_url, credentials) for _ in range(threads)]
    for client in clients:  # open each connection before the clock starts
        client.head_bucket(Bucket=bucket)
    local = threading.local()
    handed_out = iter(clients)
    lock = threading.Lock()

    def put(i: int) -> None:
        if not hasattr(local, "client"):
            with lock:
                local.client = next(handed_out)
        local.client.put_object(Bucket=bucket, Key=f"{prefix}{i:08d}", Body=bodies[i])

    start = time.perf_counter()
    if threads == 1:
        for i in range(len(bodies)):
            put(i)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(put, range(len(bodies))))
    seconds = time.perf_counter() - start

    stored = listing(clients[0], bucket, prefix)
    if len(stored) != len(bodies) or any(stored.get(f"{prefix}{i:08d}") != len(b) for i, b in enumerate(bodies)):
        raise BenchError(f"naive {threads} threads: {len(stored)} objects in the bucket, expected {len(bodies)}")
    delete_keys(clients[0], bucket, list(stored))
    return Outcome(objects=len(bodies), payload_bytes=sum(map(len, bodies)), seconds=seconds, put_calls=len(bodies))
