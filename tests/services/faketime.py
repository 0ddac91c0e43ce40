"""A shifted wall clock for one subprocess (a worker "host" whose clock is wrong), with Debian's libfaketime.

``faketime_env("+5m")`` returns the variables that make a subprocess see ``time.time()`` 5 minutes ahead
(``"-90s"``, ``"+2h"``, ``"+1d"`` work too); merge them into the environment of ``subprocess.Popen`` or of
``NetnsHosts.popen`` (``ip netns exec`` passes the environment on). Children forked by that process (Celery's
prefork pool) keep the shift, as do programs it executes (LD_PRELOAD is inherited).

``FAKETIME_DONT_FAKE_MONOTONIC=1`` is essential for Python: with the monotonic clock faked too, every timed
wait (``Lock.acquire(timeout=...)``, ``Event.wait``, ``queue.get(timeout=...)``) computes its deadline from
the fake clock but the kernel waits on the real one, and hangs for years (measured with libfaketime 0.9.10).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tests.services.processes import ServiceError

_CANDIDATES = (
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
    Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
    Path("/usr/lib/faketime/libfaketime.so.1"),
    Path("/usr/local/lib/faketime/libfaketime.so.1"),
)
_OFFSET = re.compile(r"^[+-]\d+(\.\d+)?[smhdy]?$")


def libfaketime_path() -> Path | None:
    """The libfaketime shared library, or None when it is not installed."""
    for candidate in _CANDIDATES:
        if candidate.exists():
            return candidate
    for found in Path("/usr/lib").glob("*/faketime/libfaketime.so.1"):
        return found
    return None


def faketime_available() -> str | None:
    """None when libfaketime is installed; otherwise the reason, for ``pytest.skip``."""
    if libfaketime_path() is None:
        hint = "" if shutil.which("apt-get") is None else " (apt-get install faketime)"
        return f"libfaketime is not installed{hint}"
    return None


def faketime_env(offset: str) -> dict[str, str]:
    """Variables that shift a subprocess's wall clock by ``offset`` (``"+5m"``, ``"-90s"``), not its monotonic one.

    Raises ServiceError when libfaketime is missing or ``offset`` is not a relative offset.
    """
    if not _OFFSET.match(offset):
        raise ServiceError(f"faketime offset must look like +5m, -90s, +2h or +1d; got {offset!r}")
    library = libfaketime_path()
    if library is None:
        raise ServiceError(faketime_available() or "libfaketime is not installed")
    return {
        "LD_PRELOAD": str(library),
        "FAKETIME": offset,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
