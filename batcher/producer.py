"""The producer side: validate one put_object call and stage it (guarantee 7 before guarantee 3)."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from batcher.config import Settings
from batcher.errors import StagingFullError
from batcher.models import StagedObject
from batcher.staging import FULL, Staging
from batcher.validation import check_body, check_content_type, check_key, check_metadata


def prepare_object(
    settings: Settings,
    record_id: str,
    key: Any,
    body: Any,
    content_type: Any = None,
    metadata: Any = None,
    *,
    context: str | None = None,
) -> StagedObject:
    """A validated object ready to stage; raises an InputError subclass naming the problem."""
    object_key = check_key(key)
    data = check_body(object_key, body, settings.max_object_bytes)
    return StagedObject(
        record_id=record_id,
        object_key=object_key,
        body=data,
        staged_ms=int(time.time() * 1000),
        sha256=hashlib.sha256(data).hexdigest(),
        content_type=check_content_type(object_key, content_type),
        metadata=check_metadata(object_key, metadata),
        context=context,
    )


def stage_object(staging: Staging, obj: StagedObject) -> bool:
    """Stage one object (a second time for its record id changes nothing); returns whether to flush now.

    Raises StagingFullError, StagingError.
    """
    (status,) = (outcome := staging.stage([obj])).statuses
    if status == FULL:
        raise full_error(staging, obj)
    return outcome.flush_wanted


def full_error(staging: Staging, obj: StagedObject) -> StagingFullError:
    """The error for ``obj`` refused by a full staging area: how full it is, the limit, what to do."""
    totals = staging.totals()
    return StagingFullError(
        f"staging is full: {totals['staged_bytes']} bytes staged, S3BATCH_MAX_STAGED_BYTES="
        f"{staging.limits.max_staged_bytes}; {obj.object_key!r} ({obj.size} bytes) was not staged. "
        "Retry later, or add workers or raise the limit if uploads cannot keep up"
    )
