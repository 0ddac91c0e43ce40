"""A worker consumer that answers refused (non-JSON) task messages with a FAILURE.

Celery already refuses to deserialize pickle and other untrusted content; by
default it only logs that, and the caller waits forever. Here the caller's
result gets a ContentRefusedError that says what to change.
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer

from batcher.errors import ContentRefusedError


class RefusingConsumer(Consumer):  # type: ignore[misc]
    """Consumer that fails the caller's task when its message cannot be accepted."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        super().on_decode_error(message, exc)
        headers = message.headers or {}
        task_id, task_name = headers.get("id"), str(headers.get("task", ""))
        if not task_id or not task_name.startswith("s3batch."):
            return
        error = ContentRefusedError(
            f"task {task_name} {task_id} was sent as {message.content_type!r}; s3batch workers accept only "
            "JSON messages (send with serializer='json', the default of the s3batch app)"
        )
        self.app.backend.mark_as_failure(task_id, error)
