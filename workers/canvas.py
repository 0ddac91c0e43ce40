"""Celery canvas for put_object: links, chains, chords and errbacks fire when its batch is decided.

``put_object`` returns once its object is staged, but its result comes later, from the
flush, and so must its callbacks. So the task records what Celery would
have used, its request's callbacks, errbacks, chain and chord, as a small JSON
context staged with the object; the flush hands it back, and this module does
what Celery's tracer does after a task returns or raises.
"""

from __future__ import annotations

import json
from typing import Any

from celery import Celery, signature, states
from celery.app.task import Context

_FIELDS = ("callbacks", "errbacks", "chain", "chord", "group", "group_index", "root_id", "parent_id")


def capture(request: Any) -> str | None:
    """The request's canvas as JSON, or None when the call is a plain ``delay()`` (the common case)."""
    context = {name: value for name in _FIELDS if (value := getattr(request, name, None)) is not None}
    if not any(context.get(name) for name in ("callbacks", "errbacks", "chain", "chord")):
        return None
    return json.dumps(context)


def on_success(app: Celery, task_id: str, result: Any, context: str) -> None:
    """Run links and the next step of a chain with ``result``; count a chord member as done."""
    ctx = json.loads(context)
    options: Any = {"parent_id": task_id, "root_id": ctx.get("root_id") or task_id}
    for callback in ctx.get("callbacks") or ():
        signature(callback, app=app).apply_async((result,), **options)
    chain = list(ctx.get("chain") or ())
    if chain:
        signature(chain.pop(), app=app).apply_async((result,), chain=chain, **options)
    if ctx.get("chord"):
        # The backend counts a member once by task id, so a recovered flush publishing again is harmless.
        app.backend.on_chord_part_return(_request(task_id, ctx), states.SUCCESS, result)


def on_failure(app: Celery, task_id: str, error: Exception, context: str) -> None:
    """Store FAILURE through Celery's own path, which runs errbacks and fails a chord."""
    app.backend.mark_as_failure(task_id, error, request=_request(task_id, json.loads(context)), call_errbacks=True)


def _request(task_id: str, ctx: dict[str, Any]) -> Context:
    return Context(
        id=task_id,
        group=ctx.get("group"),
        group_index=ctx.get("group_index"),
        chord=ctx.get("chord"),
        chain=ctx.get("chain"),
        errbacks=ctx.get("errbacks"),
        root_id=ctx.get("root_id"),
        parent_id=ctx.get("parent_id"),
        delivery_info={},
    )
