"""The Celery side of the direct staging path (``batcher.Batcher``): results are ordinary task results.

Each directly staged object gets a task id; its STAGED and SUCCESS states are stored in the
s3batch app's result backend exactly as for ``put_object``, so a Celery AsyncResult, a
ResultSet's ``join_native()`` and tools such as Flower's result view all work on them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery
from celery.result import AsyncResult
from kombu.exceptions import OperationalError

from batcher.config import Settings
from batcher.errors import ConfigError, StagingError
from batcher.models import StagedObject
from workers.app import app as default_app
from workers.app import settings as app_settings
from workers.bulkwait import BulkResultSet
from workers.results import ResultWriter
from workers.tasks import flush

log = logging.getLogger(__name__)


class CeleryChannel:
    """A batcher.client.ResultChannel over a Celery app's result backend."""

    def __init__(self, app: Celery = default_app) -> None:
        self.app = app
        self.results = ResultWriter(app)

    @classmethod
    def for_settings(cls, settings: Settings) -> CeleryChannel:
        """The s3batch app's channel; raises ConfigError when its results would not be where workers put them.

        Workers flushing ``settings.redis_url`` store results in their CELERY_RESULT_BACKEND, which defaults to
        that same URL; this process's app took its backend from the environment when it was imported.
        """
        if not os.environ.get("CELERY_RESULT_BACKEND") and settings.redis_url != app_settings.redis_url:
            raise ConfigError(
                f"Batcher stages into {settings.redis_url}, but the s3batch Celery app of this process keeps "
                f"results in {app_settings.redis_url} (S3BATCH_REDIS_URL): workers would publish them where no "
                "one waits. Set S3BATCH_REDIS_URL (or CELERY_RESULT_BACKEND) in this process as for the workers"
            )
        return cls()

    def staged(self, objects: Sequence[StagedObject]) -> None:
        try:
            self.results.mark_staged_many(
                [(o.record_id, {"object_key": o.object_key, "size": o.size, "sha256": o.sha256}) for o in objects]
            )
        except redis.RedisError as exc:
            raise StagingError(
                f"the result backend refused the STAGED states of {len(objects)} objects: {exc}"
            ) from exc

    def refused(self, record_id: str, error: Exception) -> None:
        try:
            self.app.backend.mark_as_failure(record_id, error)
        except redis.RedisError as exc:
            raise StagingError(f"the result backend refused the FAILURE of {record_id} ({error}): {exc}") from exc

    def handle(self, record_id: str) -> AsyncResult[Any]:
        return AsyncResult(record_id, app=self.app)

    def group(self, handles: list[AsyncResult[Any]]) -> BulkResultSet:
        return BulkResultSet(list(handles), app=self.app)

    def request_flush(self) -> None:
        try:
            flush.apply_async(expires=60)
        except OperationalError as exc:  # the objects are staged: the next beat tick flushes them anyway
            log.warning("s3batch could not ask for a flush (the beat tick will do it): %s", exc)
