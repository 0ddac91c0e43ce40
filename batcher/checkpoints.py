"""Named points of a flush, where the recovery tests inject faults.

Production installs no hook, so reaching a point costs one call over an empty
list. The tests install one in their worker processes (``tests/crashhooks.py``)
to SIGKILL, stop or slow a worker exactly there.
"""

from __future__ import annotations

from collections.abc import Callable

Hook = Callable[[str], None]

POINTS = ("claimed", "tar-built", "part-uploaded", "uploaded", "published-chunk", "marked-done")
"""Every point, in the order a flush reaches them (part-uploaded only for multipart uploads)."""

_hooks: list[Hook] = []


def reached(point: str) -> None:
    """Called by the flush at ``point`` (one of POINTS)."""
    for hook in _hooks:
        hook(point)


def install(hook: Hook) -> Callable[[], None]:
    """Call ``hook(point)`` at every point from now on; returns the function that removes it."""
    _hooks.append(hook)
    return lambda: _hooks.remove(hook)
