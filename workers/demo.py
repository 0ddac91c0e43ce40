"""``s3batch demo``: the whole job on embedded defaults, with a summary of what batching saved."""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from batcher.cost import PUT_USD_PER_1000
from batcher.embedded import RedisServer, S3Server

_DEMO_BUCKET = "s3batch-demo"


def _sizes(rng: random.Random, count: int) -> list[int]:
    """Mostly small objects (thumbnails, JSON, events), a few larger ones."""
    choices = [0, 100, 512, 1024, 4096, 16_384, 65_536, 262_144]
    weights = [1, 20, 25, 25, 15, 8, 5, 1]
    return rng.choices(choices, weights=weights, k=count)


def _configure(stack: ExitStack) -> tuple[str, str]:
    """Point this process (and the worker it starts) at Redis and S3, embedded when none is configured."""
    notes = []
    if not (os.environ.get("S3BATCH_REDIS_URL") or os.environ.get("CELERY_BROKER_URL")):
        redis_server = RedisServer(appendonly=True)
        stack.callback(redis_server.close)
        os.environ["S3BATCH_REDIS_URL"] = redis_server.url(0)
        notes.append(f"embedded redis-server on {redis_server.url(0)}")
    if not (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")):
        s3_server = S3Server(in_process=True)
        stack.callback(s3_server.close)
        os.environ["AWS_ENDPOINT_URL_S3"] = s3_server.endpoint_url
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
        notes.append(f"in-process S3-compatible server (moto) on {s3_server.endpoint_url}")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.setdefault("S3BATCH_BUCKET", _DEMO_BUCKET)
    return os.environ["S3BATCH_BUCKET"], "; ".join(notes) or "configured Redis and S3 endpoint"


def run_demo(*, objects: int, workers: int, concurrency: int, read_back: int, seed: int) -> int:
    """Send ``objects`` sample objects through put_object.delay() and report; returns an exit code."""
    with ExitStack() as stack:
        bucket, where = _configure(stack)
        # Imported only now: the Celery app reads its configuration from the environment set above.
        from celery.result import ResultSet

        from batcher import BatchReader, BatchRef
        from batcher.uploader import s3_client
        from workers.app import app
        from workers.process import WorkerProcess
        from workers.tasks import put_object

        settings = app.s3batch_settings
        s3 = s3_client()
        try:
            s3.head_bucket(Bucket=bucket)
        except Exception:
            s3.create_bucket(Bucket=bucket)
        print(f"s3batch demo: {where}; bucket {bucket}")
        logdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="s3batch-demo-")))
        for n in range(workers):
            worker = WorkerProcess(dict(os.environ), f"demo{n}", logdir, beat=n == 0, concurrency=concurrency)
            stack.callback(worker.stop)
            worker.wait_ready()
        print(
            f"started {workers} worker(s) with beat; MAX_BATCH_AGE={settings.max_batch_age_s:g} s, "
            f"MAX_BATCH_OBJECTS={settings.max_batch_objects}, MAX_BATCH_BYTES={settings.max_batch_bytes}"
        )

        rng = random.Random(seed)
        sizes = _sizes(rng, objects)
        bodies = [rng.randbytes(size) for size in sizes]
        sent_at: dict[str, float] = {}
        done_at: dict[str, float] = {}
        results = []
        started = time.monotonic()
        for i, body in enumerate(bodies):
            result = put_object.delay(
                f"demo/users/{i % 997}/object-{i:06d}.bin", body, content_type="application/octet-stream"
            )
            sent_at[result.id] = time.monotonic()
            results.append(result)
        sending_s = time.monotonic() - started
        print(f"sent {objects} objects ({sum(sizes):,} bytes) in {sending_s:.1f} s; waiting for their batches")

        def arrived(task_id: str, _value: object) -> None:
            done_at[task_id] = time.monotonic()

        ResultSet(results).join_native(timeout=300, callback=arrived)
        elapsed_s = time.monotonic() - started
        refs = [BatchRef.from_dict(result.get() or {}) for result in results]

        reader = BatchReader(s3)
        checked = rng.sample(range(objects), min(read_back, objects))
        for i in checked:
            if reader.get(refs[i]) != bodies[i]:
                print(f"MISMATCH reading back {refs[i].object_key}")
                return 1

        batches = {ref.key for ref in refs}
        latencies = sorted(done_at[r.id] - sent_at[r.id] for r in results)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        naive_cost = objects * PUT_USD_PER_1000 / 1000
        batched_cost = len(batches) * PUT_USD_PER_1000 / 1000
        print()
        print(f"objects               {objects:>12,}")
        print(f"bytes                 {sum(sizes):>12,}")
        print(f"batches (tar files)   {len(batches):>12,}")
        print(f"PutObject calls       {len(batches):>12,}   (one per object: {objects:,})")
        print(
            f"request cost          ${batched_cost:>11.6f}   (one per object: ${naive_cost:.6f}; "
            f"saved ${naive_cost - batched_cost:.6f}, {objects / max(1, len(batches)):.0f}x fewer PUTs)"
        )
        print(f"delay() -> SUCCESS    p50 {statistics.median(latencies):.2f} s, p99 {p99:.2f} s")
        print(f"throughput            {objects / elapsed_s:,.0f} objects/s end to end ({elapsed_s:.1f} s)")
        print(f"read back by range    {len(checked)} objects, all bytes equal (one ranged GET each)")
        print(f"example ref           {refs[0].to_dict()}")
    return 0
