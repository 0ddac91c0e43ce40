"""The Celery adapter of s3batch: the app (workers.app:app), its tasks, the result writer, and the ready-to-use
direct-staging ``Batcher`` and boto3-shaped ``S3BatchClient`` whose results are Celery task results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.direct import Batcher, S3BatchClient

__all__ = ["Batcher", "S3BatchClient"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that loading the adapter's CLI commands (workers.cli) does not import Celery.
    if name in __all__:
        from workers import direct

        return getattr(direct, name)
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
