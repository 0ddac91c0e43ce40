"""s3batch is a guest in the host application's Celery and Redis: it never re-runs, steals or hides their work."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import redis
from celery import current_app

from batcher.embedded import RedisServer
from tests.support import Stack
from workers.app import EXCHANGE, FLUSH_QUEUE, QUEUE, app
from workers.process import ROOT


def test_a_host_apps_long_tasks_run_once_next_to_s3batch_workers(
    stack: Stack, redis_server: RedisServer, tmp_path: object
) -> None:
    """kombu's restore sweep redelivers unacknowledged messages older than the sweeping worker's visibility
    timeout: with one table per database, s3batch's 10 s re-ran the host's waiting tasks (3 runs for 2 sends)."""
    broker_url = redis_server.url(0)
    client = redis.Redis.from_url(broker_url)
    markers = [f"{os.getpid()}-{i}" for i in range(3)]
    s3batch_worker = stack.start_worker()  # visibility timeout 10 s, swept every 5 s
    assert "redelivered after 10 s" in s3batch_worker.log()
    env = dict(os.environ, HOST_BROKER_URL=broker_url)
    log = stack.tmp_path / "host.log"
    host = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.hostapp", "worker", "-c", "1", "--loglevel=INFO",
         "--logfile", str(log), "--without-gossip", "--without-mingle", "-n", "host@%h"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        from tests.hostapp import slow

        for marker in markers:  # one runs, two wait prefetched (unacknowledged) for 8 and 16 s
            slow.delay(marker, 8)
        deadline = time.monotonic() + 60
        while sum(client.llen(f"host-runs:{m}") for m in markers) < 3:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        time.sleep(10)  # a task redelivered while it waited would have run again by now
        assert [client.llen(f"host-runs:{m}") for m in markers] == [1, 1, 1]
    finally:
        host.terminate()
        host.wait(30)
        client.delete(*[f"host-runs:{m}" for m in markers])
        client.close()


def test_each_queue_has_its_own_routing_key(stack: Stack, redis_server: RedisServer) -> None:
    """A message published to the s3batch exchange reaches exactly one queue (it used to reach both)."""
    client = redis.Redis.from_url(redis_server.url(0))
    with app.connection_for_write() as connection, connection.Producer() as producer:
        for queue in app.conf.task_queues:
            producer.publish({"probe": queue.name}, exchange=EXCHANGE, routing_key=queue.routing_key,
                             declare=list(app.conf.task_queues))  # fmt: skip
    assert (client.llen(QUEUE), client.llen(FLUSH_QUEUE)) == (1, 1)
    client.delete(QUEUE, FLUSH_QUEUE)
    client.close()


def test_importing_s3batch_leaves_the_host_apps_current_app_alone() -> None:
    code = (
        "from celery import Celery, current_app\n"
        "host = Celery('host')\n"
        "import workers.tasks, workers.app\n"
        "assert current_app.main == 'host', current_app.main\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert current_app is not app
