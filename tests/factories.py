"""Small builders of staged objects for tests."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

from batcher.models import StagedObject
from batcher.staging import StageOutcome, Staging


def staged(key: str, body: bytes, record_id: str | None = None, staged_ms: int | None = None) -> StagedObject:
    return StagedObject(
        record_id=record_id or f"rec-{key}",
        object_key=key,
        body=body,
        staged_ms=int(time.time() * 1000) if staged_ms is None else staged_ms,
        sha256=hashlib.sha256(body).hexdigest(),
    )


def stage_with(staging: Staging, objects: Sequence[StagedObject], **limits: int) -> StageOutcome:
    """Stage ``objects`` under other limits than the staging's own (StagingLimits field names)."""
    return staging.with_limits(**limits).stage(objects)
