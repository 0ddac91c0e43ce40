"""The Celery side of the direct staging path (``batcher.Batcher``): results are ordinary task results.

Each directly staged object gets a task id; its STAGED and SUCCESS states are stored in the
s3batch app's result backend exactly as for ``put_object``, so a Celery AsyncResult, a
ResultSet's ``join_native()`` and tools such as Flower's result view all work on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from batcher.models import StagedObject
from workers.app import app as default_app
from workers.bulkwait import BulkResultSet
from workers.results import ResultWriter
from workers.tasks import flush


class CeleryChannel:
    """A batcher.client.ResultChannel over a Celery app's result backend."""

    def __init__(self, app: Celery = default_app) -> None:
        self.app = app
        self.results = ResultWriter(app)

    def staged(self, objects: Sequence[StagedObject]) -> None:
        self.results.mark_staged_many(
            [(o.record_id, {"object_key": o.object_key, "size": o.size, "sha256": o.sha256}) for o in objects]
        )

    def refused(self, record_id: str, error: Exception) -> None:
        self.app.backend.mark_as_failure(record_id, error)

    def handle(self, record_id: str) -> AsyncResult[Any]:
        return AsyncResult(record_id, app=self.app)

    def group(self, handles: list[AsyncResult[Any]]) -> BulkResultSet:
        return BulkResultSet(list(handles), app=self.app)

    def request_flush(self) -> None:
        flush.apply_async(expires=60)
