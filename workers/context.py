"""What put_object stages next to an object for the flush: its canvas, when it was sent, what monitors saw.

The library keeps it as an opaque string (``StagedObject.context``); a plain
``delay()`` with task events off stages none at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from workers import celery_internals as internals


@dataclass(frozen=True)
class TaskContext:
    """The adapter's facts about one staged object."""

    canvas: dict[str, Any] | None = None
    """Callbacks, errbacks, chain and chord to run once the batch is decided (celery_internals 4)."""
    sent: float | None = None
    """When the producer sent the message (seconds since the epoch), for the runtime monitors show."""
    announced: bool = False
    """The worker already told monitors that the task was received and staged."""

    def encode(self) -> str | None:
        fields: dict[str, Any] = {}
        if self.canvas:
            fields["canvas"] = self.canvas
        if self.sent is not None:
            fields["sent"] = self.sent
        if self.announced:
            fields["announced"] = True
        return json.dumps(fields, separators=(",", ":")) if fields else None

    @classmethod
    def decode(cls, text: str | None) -> TaskContext:
        if not text:
            return cls()
        fields = json.loads(text)
        return cls(fields.get("canvas"), fields.get("sent"), bool(fields.get("announced")))


def staged_context(request: Any, watched: bool) -> str | None:
    """The context to stage with a put_object run for ``request``; ``watched`` when task events are on."""
    sent = internals.header(request, internals.SENT_HEADER) if watched else None
    return TaskContext(
        canvas=internals.capture_canvas(request),
        sent=float(sent) if isinstance(sent, int | float) else None,
        announced=watched,
    ).encode()
