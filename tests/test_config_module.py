"""One configuration: a Celery configuration module is seen alike by the worker, ``Batcher`` and ``s3batch stats``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support import Stack
from workers.process import ROOT, WorkerProcess


def module_env(stack: Stack, tmp_path: Path, source: str) -> dict[str, str]:
    """An environment whose S3BATCH_* variables point elsewhere, and a module (on PYTHONPATH) that says the truth."""
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "s3batch_site_config.py").write_text(source)
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(folder), str(ROOT)]),
        S3BATCH_CELERY_CONFIG="s3batch_site_config",
        S3BATCH_BUCKET="not-this-bucket",
        S3BATCH_MAX_BATCH_AGE="600",
    )  # S3BATCH_REDIS_URL stays the tests' database 0: only the module names the stack's
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_worker_batcher_and_stats_read_the_same_module(stack: Stack, tmp_path: Path) -> None:
    env = module_env(
        stack,
        tmp_path,
        f"s3batch_redis_url = {stack.settings.redis_url!r}\n"
        f"s3batch_bucket = {stack.settings.bucket!r}\n"
        's3batch_max_batch_age_s = "1"\n'  # a string, as from os.environ.get: parsed, not a TypeError
        'broker_transport_options = {"max_connections": 40}\n',
    )
    worker = WorkerProcess(env, "configured", tmp_path, beat=True)
    stack.workers.append(worker)
    worker.wait_ready()
    assert "redelivered after 10 s" in worker.log()  # s3batch's transport options survive the module's
    produce = (
        "import json\nfrom workers import Batcher\n"
        "with Batcher() as batcher:\n"
        "    result = batcher.put_object('configured/key', b'from the module')\n"
        "    print(json.dumps(result.get(timeout=60)))\n"
    )
    done = run(env, sys.executable, "-c", produce)
    assert done.returncode == 0, done.stderr
    ref = json.loads(done.stdout.splitlines()[-1])
    assert ref["bucket"] == stack.settings.bucket
    assert stack.tar_bytes(ref["key"])[ref["offset"] : ref["offset"] + ref["size"]] == b"from the module"
    stats = run(env, sys.executable, "-m", "batcher.cli", "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["uploaded_objects"] == 1


def test_a_bad_module_value_stops_the_worker_with_its_name(stack: Stack, tmp_path: Path) -> None:
    env = module_env(stack, tmp_path, 's3batch_max_batch_age_s = "five"\n')
    started = time.monotonic()
    done = run(env, sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--without-mingle")
    assert done.returncode != 0
    assert time.monotonic() - started < 20
    assert "s3batch_max_batch_age_s in S3BATCH_CELERY_CONFIG='s3batch_site_config'='five'" in done.stderr
    assert "Traceback" not in done.stderr
    stats = run(env, sys.executable, "-m", "batcher.cli", "stats")
    assert stats.returncode == 1 and stats.stderr.startswith("s3batch: error: s3batch_max_batch_age_s in")


def test_a_killed_workers_messages_come_back_within_the_visibility_timeout(stack: Stack, tmp_path: Path) -> None:
    """The module's broker_transport_options keep s3batch's 10 s timeout and 5 s sweep (they used to fall back
    to kombu's hour): a SIGKILLed worker's prefetched messages are staged by another within about 15 s.

    Every message the dead worker held is due by the visibility timeout after the rescuer is ready; then it comes
    back with the rescuer's next sweep. kombu before 5.7 sweeps only about every 100 s (README: supported
    versions; measured 100 to 110 s after the rescuer's start: a scan when it starts polling, another 10 s later
    or not, then one in ten calls of a 10 s timer), so there the test waits about two minutes."""
    from workers.app import broker_transport_options
    from workers.redelivery import restore_sweep_s
    from workers.tasks import put_object

    options = broker_transport_options(stack.settings)  # the module's batch age is the stack's, 1 s
    sweep_s = restore_sweep_s(options)
    # After the rescuer is ready; + a flush and slack, and on kombu before 5.7 the 10 s its timer may take before
    # the first scan that counts (measured: all back 100 s after the rescuer was ready; 135 s after the kill once).
    bound_s = options["visibility_timeout"] + sweep_s + 15 + (10 if sweep_s >= 100 else 0)

    env = module_env(
        stack,
        tmp_path,
        f"s3batch_redis_url = {stack.settings.redis_url!r}\ns3batch_bucket = {stack.settings.bucket!r}\n"
        "s3batch_max_batch_age_s = 1\nworker_prefetch_multiplier = 50\n"
        'broker_transport_options = {"max_connections": 40}\n',
    )
    first = WorkerProcess(env, "doomed", tmp_path, beat=False, concurrency=1, queues="s3batch")
    stack.workers.append(first)
    first.wait_ready()
    results = [put_object.delay(f"prefetched/{i}", b"x" * 100) for i in range(200)]
    deadline = time.monotonic() + 20
    while sum(r.state != "PENDING" for r in results) < 5:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    first.kill()
    first.stop()
    killed_at = time.monotonic()
    stack.workers.append(second := WorkerProcess(env, "rescuer", tmp_path, beat=True))
    second.wait_ready()
    ready_at = time.monotonic()
    waiting = [r for r in results if r.state == "PENDING"]
    assert len(waiting) >= 20, "the killed worker held messages it had not run"
    while any(r.state == "PENDING" for r in waiting) and time.monotonic() - ready_at < bound_s + 10:
        time.sleep(0.2)
    back = sum(r.state != "PENDING" for r in waiting)
    took = f"kombu sweep every {sweep_s:.0f} s; rescuer ready {ready_at - killed_at:.1f} s after the kill, "
    took += f"all back {time.monotonic() - ready_at:.1f} s after that"
    # kombu may lose the one message a worker popped but had not yet recorded (README: reliability).
    assert back >= len(waiting) - 1, (back, len(waiting), took)
    assert time.monotonic() - ready_at < bound_s, took
