"""The s3batch Celery app: ``celery -A workers.app worker -B`` runs a worker with embedded beat.

Broker and result backend default to S3BATCH_REDIS_URL; CELERY_BROKER_URL and
CELERY_RESULT_BACKEND override them. Only JSON messages are accepted.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

from batcher.config import Settings

QUEUE = "s3batch"
# Flushes get a queue of their own, so that a backlog of put_object messages never holds back the
# beat tick that uploads aged batches (a worker consumes both queues unless told otherwise).
FLUSH_QUEUE = "s3batch.flush"

settings = Settings.from_env()
VISIBILITY_TIMEOUT_S = max(10, int(3 * settings.max_batch_age_s))

app = Celery("s3batch", include=["workers.tasks"])
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL") or settings.redis_url,
    result_backend=os.environ.get("CELERY_RESULT_BACKEND") or settings.redis_url,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    # A dedicated queue, so that a busy application queue never delays staging or flushes.
    task_default_queue=QUEUE,
    task_queues=[Queue(QUEUE), Queue(FLUSH_QUEUE)],
    task_routes={"s3batch.flush": {"queue": FLUSH_QUEUE}},
    # Late ack: a worker killed before staging leaves the message to be redelivered.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # A dead worker's unacknowledged messages come back after this long: about three batch ages, so
    # that its objects still land soon. Redelivering a live worker's message is harmless: staging is
    # idempotent per task id, and a second flush finds nothing left to do.
    # The sweep that gives them back runs every 5 s (kombu's default is about every 100 s).
    broker_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        "unacked_restore_interval": 5,
        "unacked_restore_throttle": 1,
    },
    broker_connection_retry_on_startup=True,
    beat_schedule={
        "s3batch-flush": {
            "task": "s3batch.flush",
            "schedule": settings.flush_interval_s,
            # A tick nobody picked up soon is superseded by the next one.
            "options": {"expires": max(5.0, 5 * settings.flush_interval_s)},
        }
    },
    timezone="UTC",
)
