"""Stage objects straight into Redis from the producer's process, without a Celery message per object.

Validation, staging, the STAGED state and the flush request are exactly those of the
``put_object`` task; the result is a Celery AsyncResult that the flush completes.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery.result import AsyncResult

from batcher.producer import prepare_object, stage_object
from workers.app import app, settings
from workers.tasks import flush, runtime


def put_object_direct(
    key: str, body: Any, content_type: str | None = None, metadata: dict[str, str] | None = None
) -> AsyncResult[Any]:
    """Stage one object now; raises InputError or StagingError (StagingFullError) instead of retrying."""
    rt = runtime()
    task_id = str(uuid.uuid4())
    obj = prepare_object(settings, task_id, key, body, content_type, metadata)
    flush_wanted = stage_object(settings, rt.staging, obj)
    rt.results.mark_staged(task_id, {"object_key": obj.object_key, "size": obj.size, "sha256": obj.sha256})
    if flush_wanted:
        flush.apply_async(expires=60)
    return AsyncResult(task_id, app=app)
