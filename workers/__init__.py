"""The Celery adapter of s3batch: the app (workers.app:app), its tasks, the result writer, and the ready-to-use
direct-staging ``Batcher`` whose results are Celery task results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.direct import Batcher

__all__ = ["Batcher"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that loading the adapter's CLI commands (workers.cli) does not import Celery.
    if name == "Batcher":
        from workers.direct import Batcher

        return Batcher
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
