"""The producer of tests/test_hosts.py, run on a host of its own: ``python -m tests.hostsproducer OUT COUNT SECONDS``.

Two streams of COUNT objects each, sent over about SECONDS: ``direct/NNNNN`` staged in order with
``Batcher.put_objects`` (a chunk at a time), and ``task/NNNNN`` sent with ``put_object.delay()``. Each accepted
object's id is appended to ``OUT/<stream>.ids`` as soon as it is accepted (one line per object, in send order),
so that the test knows what was accepted even if this process dies; then all results are awaited at once with
s3batch's own bulk wait (which sends a message the broker lost again, with its task id), for at most
RESULTS_WITHIN_S, and the refs are written to ``OUT/<stream>.refs`` (JSON lines ``{"id": ..., "ref": ...}``).
Configured by the environment, as any producer.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

CHUNK = 50
# Every result within this long after the last send: a stuck batch fails the run instead of waiting for minutes.
RESULTS_WITHIN_S = 45


def body_of(stream: str, i: int) -> bytes:
    """The deterministic body of object ``i`` of ``stream`` (50 to 600 bytes)."""
    rng = random.Random(f"{stream}/{i}")
    return rng.randbytes(rng.randint(50, 600))


def key_of(stream: str, i: int) -> str:
    return f"{stream}/{i:05d}"


def _paced(count: int, seconds: float) -> list[tuple[int, float]]:
    """(start index, offset in s) of each chunk, evenly spread over ``seconds``."""
    starts = list(range(0, count, CHUNK))
    return [(start, seconds * n / len(starts)) for n, start in enumerate(starts)]


def send_direct(out: Path, count: int, seconds: float, handles: list[Any]) -> None:
    from batcher import Settings
    from workers import Batcher

    began = time.monotonic()
    with Batcher(Settings.from_env()) as batcher, open(out / "direct.ids", "a") as ids:
        for start, at in _paced(count, seconds):
            time.sleep(max(0.0, began + at - time.monotonic()))
            chunk = range(start, min(start + CHUNK, count))
            group = batcher.put_objects((key_of("direct", i), body_of("direct", i)) for i in chunk)
            accepted = list(group.results or [])
            handles.extend(accepted)
            ids.write("".join(f"{r.id}\n" for r in accepted))
            ids.flush()


def send_tasks(out: Path, count: int, seconds: float, handles: list[Any]) -> None:
    from workers.tasks import put_object

    began = time.monotonic()
    with open(out / "task.ids", "a") as ids:
        for start, at in _paced(count, seconds):
            time.sleep(max(0.0, began + at - time.monotonic()))
            for i in range(start, min(start + CHUNK, count)):
                result = put_object.delay(key_of("task", i), body_of("task", i))
                handles.append(result)
                ids.write(f"{result.id}\n")
            ids.flush()


def main(argv: list[str]) -> int:
    from workers.app import app
    from workers.bulkwait import BulkResultSet

    out, count, seconds = Path(argv[0]), int(argv[1]), float(argv[2])
    began = time.monotonic()
    handles: dict[str, list[Any]] = {"direct": [], "task": []}
    senders = [
        threading.Thread(target=send_direct, args=(out, count, seconds, handles["direct"])),
        threading.Thread(target=send_tasks, args=(out, count, seconds, handles["task"])),
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    sent = time.monotonic()
    everything = handles["direct"] + handles["task"]
    values = BulkResultSet(everything, app=app).join_native(timeout=RESULTS_WITHIN_S)
    refs = {r.id: value for r, value in zip(everything, values, strict=True)}
    timing = {"sending_s": sent - began, "results_after_last_send_s": time.monotonic() - sent}
    (out / "timing.json").write_text(json.dumps(timing))
    for stream, results in handles.items():
        lines = [json.dumps({"id": r.id, "ref": refs[r.id]}) + "\n" for r in results]
        (out / f"{stream}.refs").write_text("".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
