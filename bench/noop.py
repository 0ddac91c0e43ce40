"""A task that does nothing, on the same app, queue and message shape as ``put_object``: the ceiling of one task
per object."""

from __future__ import annotations

from typing import Any

from celery import Task

from workers.app import app


class ShortReprTask(Task[Any, None]):
    """Puts the same short ``argsrepr`` in the message as put_object does, so both messages are the same size."""

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:  # type: ignore[override]
        args = tuple(args or ())
        shown = [repr(a) if not isinstance(a, bytes) else f"<{len(a)} bytes>" for a in args]
        options.setdefault("argsrepr", f"({', '.join(shown)})")
        return super().apply_async(args, kwargs, **options)


@app.task(base=ShortReprTask, name="bench.noop")
def noop(key: str, body: bytes) -> None:
    """Receive one object's message and do nothing: Celery's own cost per task, end to end."""
