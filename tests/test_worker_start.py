"""A worker or a Batcher that cannot work says so at once, in one line, and exits non-zero (no silent start)."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batcher.embedded import LOOPBACK, free_port
from batcher.errors import ConfigError
from tests.support import Stack
from workers import Batcher
from workers.process import ROOT

RedisStarter = Callable[..., int]


@pytest.fixture
def extra_redis(tmp_path: Path) -> Iterator[RedisStarter]:
    """Start redis-server processes with extra options (``extra_redis("--requirepass", "x")``); their ports."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> int:
        port = free_port()
        while "--cluster-enabled" in options and not (port <= 55535 and _free(port + 10000)):
            port = free_port()  # a cluster node also listens on its port + 10000 (the cluster bus)
        folder = tmp_path / f"redis-{port}"
        folder.mkdir()
        command = ["redis-server", "--port", str(port), "--bind", LOOPBACK, "--dir", str(folder), "--save", "",
                   "--appendonly", "no", *options]  # fmt: skip
        processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 30
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, check=False).returncode:
            assert time.monotonic() < deadline, command
            time.sleep(0.05)
        return port

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def start_worker(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-B", "--without-mingle", "--without-gossip"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return done, time.monotonic() - started


def assert_refused(stack: Stack, message: str, **overrides: str) -> None:
    done, seconds = start_worker(stack.env(**overrides))
    assert done.returncode != 0, done.stderr[-2000:]
    assert seconds < 20
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("s3batch worker cannot start: ") and message in last, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_a_worker_without_a_bucket(stack: Stack) -> None:
    assert_refused(stack, "S3BATCH_BUCKET is not set", S3BATCH_BUCKET="")


def test_a_worker_whose_bucket_does_not_exist(stack: Stack) -> None:
    assert_refused(
        stack, "bucket 'no-such-bucket-here' (S3BATCH_BUCKET) does not exist", S3BATCH_BUCKET="no-such-bucket-here"
    )


def test_a_worker_with_a_wrong_redis_password(stack: Stack, extra_redis: RedisStarter) -> None:
    port = extra_redis("--requirepass", "right")
    assert_refused(
        stack,
        "Redis refused the credentials of S3BATCH_REDIS_URL=redis://:***@",
        S3BATCH_REDIS_URL=f"redis://:wrong@{LOOPBACK}:{port}/0",
    )


def test_a_worker_pointed_at_a_redis_cluster_node(stack: Stack, extra_redis: RedisStarter, tmp_path: Path) -> None:
    port = extra_redis("--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / "nodes.conf"))
    assert_refused(stack, "is a Redis Cluster node", CELERY_RESULT_BACKEND=f"redis://{LOOPBACK}:{port}/0")


def test_a_batcher_with_a_wrong_password_fails_when_built(stack: Stack, extra_redis: RedisStarter) -> None:
    port = extra_redis("--requirepass", "right")
    settings = dataclasses.replace(stack.settings, redis_url=f"redis://:wrong@{LOOPBACK}:{port}/0")
    started = time.monotonic()
    with pytest.raises(ConfigError, match="Redis refused the credentials of S3BATCH_REDIS_URL"):
        Batcher(settings)
    assert time.monotonic() - started < 5


def test_a_batcher_whose_redis_is_down_fails_when_built(stack: Stack) -> None:
    settings = dataclasses.replace(stack.settings, redis_url=f"redis://{LOOPBACK}:{free_port()}/0")
    with pytest.raises(ConfigError, match="cannot connect to Redis at S3BATCH_REDIS_URL"):
        Batcher(settings)
