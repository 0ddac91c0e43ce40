"""Fault injection for the recovery tests: imported by a test worker (tests/crash_config.py), never in production.

``S3BATCH_CRASH_AT=point[:n[:action]]``: the n-th time (default 1st) a flush reaches ``point`` (see
batcher.checkpoints), ``kill`` (default) SIGKILLs this worker's whole process group, ``stop`` SIGSTOPs it (a
stalled flush), ``sleep`` pauses this flush for 3 s (a slow one).
"""

from __future__ import annotations

import logging
import os
import signal
import time

from batcher import checkpoints

log = logging.getLogger(__name__)


def crash_hook(spec: str) -> checkpoints.Hook:
    """The hook that ``spec`` describes."""
    target, nth, action = ([*spec.split(":"), "", ""])[:3]
    if target not in checkpoints.POINTS:
        raise ValueError(f"S3BATCH_CRASH_AT={spec!r}: {target!r} is not one of {checkpoints.POINTS}")
    remaining = [int(nth or 1)]

    def crash(point: str) -> None:
        if point != target:
            return
        remaining[0] -= 1
        if remaining[0] != 0:
            return
        log.error("s3batch S3BATCH_CRASH_AT=%s reached", spec)
        if action == "sleep":
            time.sleep(3)
        else:
            os.killpg(os.getpgid(0), signal.SIGSTOP if action == "stop" else signal.SIGKILL)

    return crash


if spec := os.environ.get("S3BATCH_CRASH_AT"):
    checkpoints.install(crash_hook(spec))
