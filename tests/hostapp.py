"""A host application's own Celery app, as a Django or Flask project has one: plain defaults, the same Redis.

Its worker runs as ``celery -A tests.hostapp worker``; HOST_BROKER_URL names the Redis it shares with s3batch.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

app = Celery("host", broker=os.environ.get("HOST_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(task_default_queue="host", worker_prefetch_multiplier=4)


@app.task(name="host.slow")
def slow(marker: str, seconds: float) -> None:
    """A long task that records each run (a sent e-mail, a charged card)."""
    redis.Redis.from_url(app.conf.broker_url).rpush(f"host-runs:{marker}", str(time.time()))
    time.sleep(seconds)
