"""The s3batch Celery app: ``celery -A workers.app worker -B`` runs a worker with embedded beat.

Broker and result backend default to S3BATCH_REDIS_URL; CELERY_BROKER_URL and
CELERY_RESULT_BACKEND override them. Only JSON messages are accepted.

``S3BATCH_CELERY_CONFIG=module`` names a Celery configuration module whose
lowercase settings (``imports``, ``broker_url``, ``worker_prefetch_multiplier``...)
are applied on top of these defaults, and whose ``s3batch_<field>`` values
(``s3batch_bucket``, ``s3batch_max_batch_age_s``...) override the environment.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any

from celery import Celery
from kombu import Queue

from batcher.config import Settings
from batcher.errors import ConfigError


def celery_config_module() -> dict[str, Any]:
    """The lowercase settings of the module named by S3BATCH_CELERY_CONFIG (empty when unset)."""
    name = os.environ.get("S3BATCH_CELERY_CONFIG")
    if not name:
        return {}
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"S3BATCH_CELERY_CONFIG={name!r} cannot be imported: {exc}") from exc
    return {key: value for key, value in vars(module).items() if key.islower() and not key.startswith("_")}


def settings_with(overrides: dict[str, Any]) -> Settings:
    """Settings from the environment, with ``s3batch_<field>`` values of a Celery config on top."""
    fields = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(k for k in overrides if k.startswith("s3batch_") and k.removeprefix("s3batch_") not in fields)
    if unknown:
        raise ConfigError(f"unknown s3batch settings in S3BATCH_CELERY_CONFIG: {', '.join(unknown)}")
    chosen = {k.removeprefix("s3batch_"): v for k, v in overrides.items() if k.startswith("s3batch_")}
    return dataclasses.replace(Settings.from_env(), **chosen)


_user_config = celery_config_module()

QUEUE = "s3batch"
# Flushes get a queue of their own, so that a backlog of put_object messages never holds back the
# beat tick that uploads aged batches (a worker consumes both queues unless told otherwise).
FLUSH_QUEUE = "s3batch.flush"

settings = settings_with(_user_config)
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
app.conf.update({key: value for key, value in _user_config.items() if not key.startswith("s3batch_")})
