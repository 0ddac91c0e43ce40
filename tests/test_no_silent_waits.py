"""A producer never waits silently: with no worker serving the queue it waits on, it hears NoWorkerError."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batcher.errors import NoWorkerError
from tests.support import Stack
from workers.app import create_app
from workers.bulkwait import BulkResultSet
from workers.process import ROOT

TIMEOUT_S = 2.0


def test_delay_with_no_worker_raises_no_worker_error_within_its_bound(stack: Stack) -> None:
    app = create_app(dataclasses.replace(stack.settings, no_worker_timeout_s=TIMEOUT_S))
    result = app.tasks["s3batch.put_object"].delay("nobody/listens", b"x")
    started = time.monotonic()
    with pytest.raises(NoWorkerError, match=r"no s3batch worker has served the 's3batch' queue for 2 s"):
        result.get(timeout=60)
    assert TIMEOUT_S <= time.monotonic() - started < TIMEOUT_S + 4


def test_staged_objects_with_no_flushing_worker_raise_naming_the_flush_queue(stack: Stack) -> None:
    settings = dataclasses.replace(stack.settings, no_worker_timeout_s=TIMEOUT_S, max_batch_age_s=1)
    stack.start_worker(beat=False, queues="s3batch")  # stages, but nobody flushes
    app = create_app(settings)
    result = app.tasks["s3batch.put_object"].delay("staged/forever", b"x")
    with pytest.raises(NoWorkerError, match=r"'s3batch\.flush' queue"):
        result.get(timeout=60)
    assert result.state == "STAGED"  # type: ignore[comparison-overlap]  # celery-types knows only built-in states


def test_the_bulk_wait_raises_too(stack: Stack) -> None:
    from workers import Batcher

    settings = dataclasses.replace(stack.settings, no_worker_timeout_s=TIMEOUT_S)
    with Batcher(settings) as batcher:
        results = batcher.put_objects((f"bulk/{i}", b"x") for i in range(20))
    assert isinstance(results, BulkResultSet)
    started = time.monotonic()
    with pytest.raises(NoWorkerError, match=r"'s3batch\.flush' queue"):
        results.join_native(timeout=60)
    assert time.monotonic() - started < TIMEOUT_S + 10


def test_put_with_no_worker_exits_with_one_line(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"a")
    env = stack.env(S3BATCH_NO_WORKER_TIMEOUT=TIMEOUT_S)
    done = subprocess.run(
        [sys.executable, "-m", "batcher.cli", "put", str(tmp_path / "a.txt"), "--no-progress"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "no s3batch worker has served the 's3batch' queue" in done.stderr and "Traceback" not in done.stderr


def test_put_timeout_bounds_the_wait(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"a")
    stack.start_worker(beat=False, queues="s3batch")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "batcher.cli", "put", str(tmp_path / "a.txt"), "--no-progress", "--timeout", "3"],
        env=stack.env(), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and time.monotonic() - started < 15
    assert "1 of 1 objects were not uploaded within --timeout 3 s" in done.stderr, done.stderr


def test_put_with_redis_down_says_so_in_one_line(stack: Stack, tmp_path: Path) -> None:
    from batcher.embedded import free_port

    (tmp_path / "a.txt").write_bytes(b"a")
    down = f"redis://127.0.0.1:{free_port()}/0"
    for direct in ([], ["--direct"]):
        done = subprocess.run(
            [sys.executable, "-m", "batcher.cli", "put", str(tmp_path / "a.txt"), "--no-progress", *direct],
            env=stack.env(S3BATCH_REDIS_URL=down, CELERY_BROKER_URL=down, CELERY_RESULT_BACKEND=down),
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("s3batch: error: cannot connect to Redis"), done.stderr
