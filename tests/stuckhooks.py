"""A task stuck in a live worker, for tests/test_brokers.py: imported by a test worker (tests/stuck_config.py).

A put_object whose key starts with ``stuck/`` sleeps ``S3BATCH_TEST_STUCK_S`` seconds in its pool process before
it runs, while the worker's main process stays alive and keeps its broker connection (and heartbeats) going:
the case that only RabbitMQ's consumer_timeout bounds.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery.signals import task_prerun


@task_prerun.connect
def _hold(sender: Any = None, args: Any = None, **_: Any) -> None:
    """Sleep before a ``stuck/`` put_object (the task then runs, and finds its object already staged)."""
    if getattr(sender, "name", None) == "s3batch.put_object" and args and str(args[0]).startswith("stuck/"):
        time.sleep(float(os.environ.get("S3BATCH_TEST_STUCK_S", "30")))
