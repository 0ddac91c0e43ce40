"""A worker that cannot work does not start: one line that says what is wrong and how to fix it, exit status 1.

Checked before anything else runs: the settings, the bucket, the staging Redis (any topology; with
S3BATCH_STAGING_REPLICAS, enough replicas), the broker and result backend (reachable, credentials, not a
Redis Cluster, which Celery's Redis transport and backend cannot use), and that the default bucket and every
bucket S3BATCH_BUCKETS names without a wildcard exist for these S3 credentials.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, cast

import redis
from celery import bootsteps

from batcher.errors import ConfigError
from batcher.preflight import check_bucket, check_redis, check_staging, refuse_cluster
from batcher.uploader import s3_client
from workers import celery_internals as internals
from workers.app import S3BatchApp

log = logging.getLogger(__name__)

_CELERY_CANNOT_CLUSTER = (
    "Celery's Redis broker and result backend do not support Redis Cluster (CROSSSLOT errors); point "
    "CELERY_BROKER_URL and CELERY_RESULT_BACKEND at a single Redis or a Sentinel group"
)


def check_worker(app: S3BatchApp) -> None:
    """Raise ConfigError for the first thing that would stop this worker from uploading batches."""
    settings = app.s3batch_settings
    bucket = settings.require_bucket()
    from workers.runtime import runtime

    check_staging(runtime(app).lanes.client, settings)
    check_result_backend(app)
    broker_url = str(app.conf.broker_url)
    if broker_url.startswith(("redis://", "rediss://", "unix://")):
        client = redis.Redis.from_url(broker_url, socket_connect_timeout=5)
        try:
            info = check_redis(client, broker_url, "CELERY_BROKER_URL")
        finally:
            client.close()
        refuse_cluster(info, broker_url, "CELERY_BROKER_URL", _CELERY_CANNOT_CLUSTER)
    s3 = s3_client()
    for allowed in sorted({bucket, *(p for p in settings.bucket_patterns if not any(ch in p for ch in "*?["))}):
        check_bucket(s3, allowed, f"{settings.prefix}.s3batch-probe")


def check_result_backend(app: S3BatchApp) -> None:
    """ConfigError when the app's Redis result backend cannot be reached or is a Redis Cluster node."""
    if internals.is_redis_backend(app.backend):
        url = str(app.conf.result_backend)
        info = check_redis(cast(Any, app.backend).client, url, "CELERY_RESULT_BACKEND")
        refuse_cluster(info, url, "CELERY_RESULT_BACKEND", _CELERY_CANNOT_CLUSTER)


class Preflight(bootsteps.Step):
    """Runs ``check_worker`` when the worker is built, before its pool, consumer or beat start."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        app = parent.app
        if isinstance(app, S3BatchApp):
            try:
                check_worker(app)
            except ConfigError as exc:
                log.critical("s3batch worker cannot start: %s", exc)
                print(f"s3batch worker cannot start: {exc}", file=sys.stderr, flush=True)
                raise SystemExit(1) from None
        super().__init__(parent, **kwargs)
