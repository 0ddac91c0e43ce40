"""Extract a whole batch into a directory, never outside it (``s3batch extract``)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from batcher.errors import CorruptedBatchError
from batcher.membernames import MAX_SEGMENT_BYTES
from batcher.reader import BatchReader
from batcher.tarstream import Progress

MANIFEST = ".s3batch/manifest.jsonl"  # no object member is ever named under .s3batch/


@dataclass(frozen=True)
class Extracted:
    """What ``extract`` wrote: objects and bytes, and the manifest that maps each exact key to its path."""

    objects: int
    bytes: int
    manifest: Path


def extract(reader: BatchReader, bucket: str, key: str, directory: Path, progress: Progress | None = None) -> Extracted:
    """Write every object at its member name under ``directory`` and the manifest; every checksum checked.

    Raises CorruptedBatchError for a member name that could escape ``directory`` or a symlink in the way,
    and what ``BatchReader.iter_batch`` raises.
    """
    directory.mkdir(parents=True, exist_ok=True)
    root = directory.resolve()
    lines: list[str] = []
    size = 0
    for info, data in reader.iter_batch(bucket, key, progress=progress):
        _write_file(root, info.name, data)
        ref = info.ref
        row = {
            "key": ref.object_key, "path": info.name, "offset": ref.offset, "size": ref.size,
            "sha256": ref.sha256, "content_type": info.content_type, "metadata": dict(info.metadata),
        }  # fmt: skip
        lines.append(json.dumps(row, ensure_ascii=False))
        size += len(data)
    _write_file(root, MANIFEST, "".join(f"{line}\n" for line in lines).encode("utf-8"))
    return Extracted(len(lines), size, directory / MANIFEST)


def _write_file(root: Path, name: str, data: bytes) -> None:
    """Write ``data`` at the relative path ``name`` under ``root``; CorruptedBatchError for a name that could escape."""
    segments = name.split("/")
    if any(
        segment in ("", ".", "..") or len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES
        or any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in segment)  # the controls member names escape
        for segment in segments
    ):  # fmt: skip
        raise CorruptedBatchError(f"member name {name!r} is not a safe relative path; refusing to write it")
    path = root
    for segment in segments[:-1]:  # one level at a time, so that no symlink already in DIR is followed
        path /= segment
        if path.is_symlink():
            raise CorruptedBatchError(f"{path} is a symlink; refusing to write {name!r} through it")
        path.mkdir(exist_ok=True)
    fd = os.open(path / segments[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with open(fd, "wb") as file:
        file.write(data)
