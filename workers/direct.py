"""The Celery side of the direct staging path: ``workers.Batcher`` is ``batcher.Batcher`` with Celery results.

Each directly staged object gets a task id; its STAGED and SUCCESS states are stored in the
s3batch app's result backend exactly as for ``put_object``, so a ``PutObjectResult`` (an
AsyncResult), a ``BulkResultSet``'s ``join_native()`` and tools such as Flower all work on them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import redis
from kombu.exceptions import OperationalError

from batcher.client import FULL_WAIT_S
from batcher.client import Batcher as CoreBatcher
from batcher.config import Settings
from batcher.errors import StagingError
from batcher.models import StagedObject
from batcher.s3client import S3BatchClient as CoreS3BatchClient
from workers.app import S3BatchApp, create_app
from workers.app import app as default_app
from workers.bulkwait import BulkResultSet
from workers.preflight import check_result_backend
from workers.results import PutObjectResult, ResultWriter

log = logging.getLogger(__name__)


class CeleryChannel:
    """A batcher.client.ResultChannel over an s3batch app's result backend."""

    def __init__(self, app: S3BatchApp = default_app) -> None:
        self.app = app
        self.results = ResultWriter(app)
        check_result_backend(app)  # where every caller's result is stored and awaited

    def staged(self, objects: Sequence[StagedObject], lane: str, epoch: str) -> None:
        try:
            self.results.mark_staged_many(objects, lane, epoch)
        except redis.RedisError as exc:
            raise StagingError(
                f"the result backend refused the STAGED states of {len(objects)} objects: {exc}"
            ) from exc

    def refuse(self, record_id: str, error: Exception) -> None:
        try:
            self.results.refuse(record_id, error)
        except redis.RedisError as exc:
            raise StagingError(f"the result backend refused the FAILURE of {record_id} ({error}): {exc}") from exc

    def handle(self, record_id: str) -> PutObjectResult:
        return PutObjectResult(record_id, app=self.app)

    def group(self, handles: list[PutObjectResult]) -> BulkResultSet:
        return BulkResultSet(list(handles), app=self.app)

    def request_flush(self) -> None:
        try:
            self.app.tasks["s3batch.flush"].apply_async(expires=60)
        except OperationalError as exc:  # the objects are staged: the next beat tick flushes them anyway
            log.warning("s3batch could not ask for a flush (the beat tick will do it): %s", exc)


def app_for(settings: Settings | None) -> S3BatchApp:
    """The s3batch app whose workers flush what ``settings`` stage: the default one, or one built for them."""
    if settings is None or settings == default_app.s3batch_settings:
        return default_app
    return _app_for(settings)


@functools.cache
def _app_for(settings: Settings) -> S3BatchApp:
    return create_app(settings, default_app.config_module)


class Batcher(CoreBatcher[PutObjectResult, BulkResultSet]):
    """Direct staging whose results are Celery task results of the s3batch app for ``settings``.

    ``Batcher(Settings.from_env())`` (or ``Batcher()``) is ready to use; results land where the workers that
    flush ``settings``' staging store them, and ``put_objects`` returns a BulkResultSet to wait on in bulk.
    """

    def __init__(
        self, settings: Settings | None = None, *, full_wait_s: float = FULL_WAIT_S, lane: int | None = None
    ) -> None:
        app = app_for(settings)
        super().__init__(app.s3batch_settings, channel=CeleryChannel(app), full_wait_s=full_wait_s, lane=lane)


class S3BatchClient(CoreS3BatchClient[PutObjectResult, BulkResultSet]):
    """boto3's ``put_object`` shape, ready to use: ``S3BatchClient().put_object(Bucket=, Key=, Body=)`` returns
    a PutObjectResult whose ``get()`` gives the ref."""

    def __init__(self, settings: Settings | None = None, *, prefix: str | None = None) -> None:
        super().__init__(Batcher(settings), prefix=prefix)

    def close(self) -> None:
        self.batcher.close()
