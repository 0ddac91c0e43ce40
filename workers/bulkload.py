"""``s3batch put PATH...``: bulk-load files through put_object (or the direct path) with progress.

Before anything is sent, Redis is checked (one line when it is down, not a broker's retry loop); while the
batches are uploaded, a wait with no worker to serve it raises NoWorkerError, and ``--timeout`` bounds it.
The progress bars (bytes and objects against their totals) are drawn only on a terminal.
"""

from __future__ import annotations

import json
import mimetypes
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import redis
from celery.exceptions import TimeoutError as CeleryTimeoutError
from kombu.exceptions import OperationalError
from tqdm import tqdm  # type: ignore[import-untyped]

from batcher.errors import S3BatchError, StagingError
from batcher.preflight import check_redis


def walk(paths: Sequence[Path]) -> Iterator[tuple[Path, str]]:
    """(file, object key) for every file: a directory's files keyed relative to it, a file by its name."""
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                yield file, file.relative_to(path).as_posix()
        elif path.is_file():
            yield path, path.name
        else:
            raise S3BatchError(f"{path} is neither a file nor a directory")


def put_paths(
    paths: Sequence[Path], *, direct: bool, refs_out: Path | None, progress: bool, timeout_s: float | None = None
) -> int:
    """Stage every file, wait for every batch (at most ``timeout_s``), write refs; returns 1 when any file failed.

    Raises ConfigError when Redis cannot be used, NoWorkerError when no worker serves the queues.
    """
    from workers.app import app
    from workers.bulkwait import BulkResultSet
    from workers.direct import Batcher
    from workers.tasks import put_object

    settings = app.s3batch_settings
    files = list(walk(paths))
    total_bytes = sum(file.stat().st_size for file, _ in files)
    _check_redis(app, direct)
    failed: dict[Path, str] = {}
    stopped = ""
    started = time.monotonic()
    shown = None if progress else True  # tqdm's None: draw only on a terminal
    read_files = 0
    with tqdm(desc="staging", total=total_bytes, unit="B", unit_scale=True, disable=shown) as bar:

        def read(file: Path, key: str) -> tuple[str, bytes, str | None]:
            nonlocal read_files
            data = file.read_bytes()
            read_files += 1
            bar.set_postfix_str(f"{read_files:,}/{len(files):,} objects", refresh=False)
            bar.update(len(data))
            return key, data, mimetypes.guess_type(file.name)[0]

        if direct:
            with Batcher(settings) as batcher:
                try:
                    results: list[Any] = list(batcher.put_objects(read(f, k) for f, k in files).results or [])
                except StagingError as exc:  # the files before it are decided (staged ones land); the rest failed
                    results = list(exc.accepted.results) if exc.accepted is not None else []
                    stopped = str(exc)
        else:
            try:
                results = [put_object.delay(*read(f, k)) for f, k in files]
            except OperationalError as exc:
                raise StagingError(f"the broker refused the put_object messages: {exc}") from exc
    sent = {result.id: file for result, (file, _) in zip(results, files, strict=False)}  # in input order
    failed.update({file: f"not staged: {stopped}" for file, _ in files[len(results) :]})
    late = ""
    with tqdm(total=len(results), desc="uploaded", unit="obj", disable=shown) as bar:
        try:
            BulkResultSet(results, app=app).join_native(
                timeout=timeout_s, propagate=False, callback=lambda task_id, value: bar.update(1)
            )
        except CeleryTimeoutError:
            waiting = sum(result.state not in ("SUCCESS", "FAILURE") for result in results)
            late = f"{waiting} of {len(results)} objects were not uploaded within --timeout {timeout_s:g} s"
    _write_refs(refs_out, results, sent, failed)
    elapsed = time.monotonic() - started
    uploaded = sum(result.state == "SUCCESS" for result in results)
    print(f"{uploaded} objects uploaded in {elapsed:.1f} s, {len(failed)} failed")
    if late:
        print(
            f"s3batch: {late}; their results will still arrive (s3batch find KEY locates them later)", file=sys.stderr
        )
    for file, why in failed.items():
        print(f"s3batch: failed: {file}: {why}", file=sys.stderr)
    return 1 if failed else 0


def _check_redis(app: Any, direct: bool) -> None:
    """ConfigError in one line when staging Redis (and, for messages, a Redis broker) cannot be used."""
    settings = app.s3batch_settings
    clients = [(settings.redis_url, "S3BATCH_REDIS_URL")]
    broker_url = str(app.conf.broker_url)
    if not direct and broker_url.startswith(("redis://", "rediss://", "unix://")):
        clients.append((broker_url, "CELERY_BROKER_URL"))
    for url, setting in clients:
        client = redis.Redis.from_url(url, socket_connect_timeout=5)
        try:
            check_redis(client, url, setting, loading_wait_s=5)
        finally:
            client.close()


def _write_refs(refs_out: Path | None, results: list[Any], sent: dict[str, Path], failed: dict[Path, str]) -> None:
    """One JSON line per uploaded file (its ``path`` and ref); the others go to ``failed`` with their state."""
    out = refs_out.open("w") if refs_out else None
    try:
        for result in results:
            file = sent[result.id]
            if result.state == "SUCCESS":
                if out:
                    out.write(json.dumps({"path": str(file), **(result.get() or {})}, ensure_ascii=False) + "\n")
            elif result.state == "FAILURE":
                failed[file] = f"FAILURE: {result.result}"
            else:
                failed[file] = f"{result.state}: not uploaded yet"
    finally:
        if out:
            out.close()
