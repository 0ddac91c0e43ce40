"""The producer side: validate one put_object call and stage it (guarantee 7 before guarantee 3)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any

from batcher.config import Settings
from batcher.errors import StagingFullError, TaskIdReusedError
from batcher.lanes import Lanes
from batcher.models import StagedObject
from batcher.partitions import Partition
from batcher.staging import CONFLICT, FULL, StageOutcome, Staging
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


def stage_into(lanes: Lanes, partition: Partition, lane: str, objects: Sequence[StagedObject]) -> StageOutcome:
    """Stage ``objects`` into ``lane`` of ``partition`` and keep the lane indexes right: a lane that just got
    work is scored by its oldest object's staging time, one that fills a batch is due now. Raises StagingError."""
    lanes.register(partition, lane)
    outcome = lanes.staging(lane).stage(objects)
    if outcome.full:
        lanes.mark_due(lane, 0)
    elif outcome.first_ms:
        lanes.mark_due(lane, outcome.first_ms)
    return outcome


def stage_object(lanes: Lanes, partition: Partition, lane: str, obj: StagedObject) -> StageOutcome:
    """Stage one object (a second time for its record id changes nothing); its outcome says whether to flush now
    and the staging epoch it is in.

    Raises StagingFullError, TaskIdReusedError (the id staged another object), StagingError.
    """
    outcome = stage_into(lanes, partition, lane, [obj])
    staging = lanes.staging(lane)
    (status,) = outcome.statuses
    if status == FULL:
        raise full_error(staging, obj)
    if status == CONFLICT:
        raise reused_error(obj)
    return outcome


def reused_error(obj: StagedObject) -> TaskIdReusedError:
    """The error for a record id that already staged another object (a reused task id)."""
    return TaskIdReusedError(
        f"task id {obj.record_id} already staged another object (a different key, body, content type or "
        f"metadata than {obj.object_key!r}, {obj.size} bytes); give every object its own task id"
    )


def full_error(staging: Staging, obj: StagedObject) -> StagingFullError:
    """The error for ``obj`` refused by a full staging area: how full it is, the limit, what to do."""
    totals = staging.totals()
    return StagingFullError(
        f"staging is full: {totals['staged_bytes']} bytes staged, S3BATCH_MAX_STAGED_BYTES="
        f"{staging.limits.max_staged_bytes}; {obj.object_key!r} ({obj.size} bytes) was not staged. "
        "Retry later, or add workers or raise the limit if uploads cannot keep up"
    )
