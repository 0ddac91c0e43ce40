"""The benchmark's own services: redis-server, moto's S3 server and Celery workers, all on loopback, and
SeaweedFS for the scenario that compares the two servers.

They are started exactly like the tests start theirs (``batcher.embedded``, ``workers.process``,
``tests.services.seaweed``), so a benchmark never sends anything anywhere but 127.0.0.1, and everything is
stopped on exit.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batcher.embedded import RedisServer, S3Server
from bench.buckets import s3_client
from tests.services.seaweed import SeaweedFS
from workers.process import WorkerProcess

# Every variable of these families is dropped before ours are set: a user's shell could otherwise point
# boto3 at real S3 (profiles, endpoints, credentials) or route loopback requests through a proxy.
_STRAY_PREFIXES = ("AWS_", "S3BATCH_", "CELERY_")
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
CELERY_CONFIG_MODULE = "bench.celeryconfig"


@dataclass
class Services:
    """The running services and the environment that points at them (also set in ``os.environ``)."""

    redis: RedisServer
    s3: S3Server
    bucket: str
    env: dict[str, str]
    logdir: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    seaweedfs: SeaweedFS | None = None  # started by the first SeaweedFS scenario, then kept for every run
    shape: tuple[int, int] = (0, 0)  # workers and processes per worker of the last start_workers
    started: int = 0  # workers started so far: each gets its own name and log file

    @property
    def endpoint_url(self) -> str:
        return self.s3.endpoint_url

    def redis_url(self, db: int = 0) -> str:
        return self.redis.url(db)

    def client(self) -> Any:
        """A fresh boto3 S3 client for the moto server."""
        return s3_client(self.s3.endpoint_url)

    def start_workers(self, app: Any, count: int, concurrency: int, s3_env: dict[str, str] | None = None) -> None:
        """Start ``count`` workers of ``concurrency`` processes (the first with beat) and wait for their pings;
        ``s3_env`` (AWS_* variables, or CELERY_BROKER_URL) points them at another S3 server than moto, or at
        another broker than Redis."""
        env = {**self.env, **(s3_env or {})}
        self.shape = (count, concurrency)
        first = len(self.workers)
        for n in range(count):
            name, self.started = f"bench{self.started}", self.started + 1
            self.workers.append(
                WorkerProcess(env, name, self.logdir, beat=n == 0, concurrency=concurrency, loglevel="WARNING")
            )
        wait_ready(app, self.workers[first:])

    def restart_workers(self, app: Any, s3_env: dict[str, str] | None = None) -> None:
        """Stop the running workers and start as many, pointed at moto and Redis or (``s3_env``) elsewhere."""
        for worker in self.workers:
            worker.stop()
        self.workers.clear()  # stopped: never signalled again
        self.start_workers(app, *self.shape, s3_env)

    def seaweed(self) -> SeaweedFS:
        """The suite's SeaweedFS with the workers' bucket (same name as on moto), started on first use (3-5 s)."""
        if self.seaweedfs is None:
            self.seaweedfs = SeaweedFS()
            self.seaweedfs.client().create_bucket(Bucket=self.bucket)
        return self.seaweedfs

    def close(self) -> None:
        """Stop the workers, then S3 and Redis; results still referenced could otherwise unsubscribe too late."""
        gc.collect()
        for worker in self.workers:
            worker.stop()
        if self.seaweedfs is not None:
            self.seaweedfs.close()
        self.s3.close()
        self.redis.close()
        shutil.rmtree(self.logdir, ignore_errors=True)


def clean_environment(values: dict[str, str]) -> dict[str, str]:
    """Drop stray AWS_/S3BATCH_/CELERY_ and proxy variables from os.environ, then set ``values``."""
    for name in list(os.environ):
        if name.startswith(_STRAY_PREFIXES) or name in _PROXY_VARIABLES:
            del os.environ[name]
    os.environ.update(values)
    return dict(os.environ)


def start_services(*, max_batch_age_s: float) -> Services:
    """Start redis-server and moto (a subprocess, off our GIL), set the environment, create the bucket.

    Workers are started separately (``Services.start_workers``) once ``workers.app`` can be imported.
    """
    redis_server = RedisServer(appendonly=True)
    s3_server: S3Server | None = None
    try:
        s3_server = S3Server(in_process=False)
        logdir = Path(tempfile.mkdtemp(prefix="s3batch-bench-"))
        bucket = f"bench-s3batch-{int(time.time())}"
        env = clean_environment(
            {
                "CELERY_BROKER_URL": redis_server.url(0),
                "CELERY_RESULT_BACKEND": redis_server.url(0),
                "S3BATCH_REDIS_URL": redis_server.url(0),
                "S3BATCH_BUCKET": bucket,
                "S3BATCH_MAX_BATCH_AGE": f"{max_batch_age_s:g}",
                "S3BATCH_CELERY_CONFIG": CELERY_CONFIG_MODULE,
                "AWS_ENDPOINT_URL": s3_server.endpoint_url,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "NO_PROXY": "127.0.0.1,localhost",
            }
        )
        s3_client(s3_server.endpoint_url).create_bucket(Bucket=bucket)
        return Services(redis_server, s3_server, bucket, env, logdir)
    except BaseException:
        if s3_server is not None:
            s3_server.close()
        redis_server.close()
        raise


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
