"""The s3batch Celery app: ``celery -A workers.app worker -B`` runs a worker with embedded beat.

Broker and result backend default to S3BATCH_REDIS_URL; CELERY_BROKER_URL and
CELERY_RESULT_BACKEND override them. Only JSON messages are accepted.
"""

from __future__ import annotations

import os

from celery import Celery

from batcher.config import Settings

QUEUE = "s3batch"

settings = Settings.from_env()

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
    # Late ack: a worker killed before staging leaves the message to be redelivered.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # Unacknowledged messages of a dead worker come back after this; it stays above the
    # longest put_object retry countdown so a waiting retry is never delivered twice.
    broker_transport_options={"visibility_timeout": max(60, int(6 * settings.max_batch_age_s))},
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
