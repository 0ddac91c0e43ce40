"""``s3batch put PATH...``: bulk-load files through put_object (or the direct path) with progress."""

from __future__ import annotations

import json
import mimetypes
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from celery.result import AsyncResult
from tqdm import tqdm  # type: ignore[import-untyped]

from batcher.errors import S3BatchError, StagingError


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


def put_paths(paths: Sequence[Path], *, direct: bool, refs_out: Path | None, progress: bool) -> int:
    """Stage every file, wait for every batch, write refs; returns 1 when any file failed."""
    from workers.app import app
    from workers.bulkwait import BulkResultSet
    from workers.direct import Batcher
    from workers.tasks import put_object

    failed: dict[Path, str] = {}
    stopped = ""
    started = time.monotonic()
    files = list(walk(paths))
    with tqdm(desc="staging", unit="B", unit_scale=True, disable=not progress) as bar:

        def read(file: Path, key: str) -> tuple[str, bytes, str | None]:
            data = file.read_bytes()
            bar.update(len(data))
            return key, data, mimetypes.guess_type(file.name)[0]

        if direct:
            with Batcher() as batcher:
                try:
                    results: list[AsyncResult[Any]] = batcher.put_objects(read(f, k) for f, k in files).results or []
                except StagingError as exc:  # the files before it are decided (staged ones land); the rest failed
                    results = exc.accepted.results if exc.accepted is not None else []
                    stopped = str(exc)
        else:
            results = [put_object.delay(*read(f, k)) for f, k in files]
    sent = {result.id: file for result, (file, _) in zip(results, files, strict=False)}  # in input order
    failed.update({file: f"not staged: {stopped}" for file, _ in files[len(results) :]})
    with tqdm(total=len(results), desc="uploaded", unit="obj", disable=not progress) as bar:
        BulkResultSet(results, app=app).join_native(propagate=False, callback=lambda task_id, value: bar.update(1))
    out = refs_out.open("w") if refs_out else None
    try:
        for result in results:
            file = sent[result.id]
            if result.state == "SUCCESS":
                if out:
                    out.write(json.dumps({"path": str(file), **(result.get() or {})}, ensure_ascii=False) + "\n")
            else:
                failed[file] = f"{result.state}: {result.result}"
    finally:
        if out:
            out.close()
    elapsed = time.monotonic() - started
    uploaded = sum(result.state == "SUCCESS" for result in results)
    print(f"{uploaded} objects uploaded in {elapsed:.1f} s, {len(failed)} failed")
    for file, why in failed.items():
        print(f"s3batch: failed: {file}: {why}", file=sys.stderr)
    return 1 if failed else 0
