"""A deterministic POSIX pax tar of one batch, spooled to disk past a threshold.

The same staged objects always give the same bytes: member order is staging
order, mtimes come from staging time, owner and mode are fixed. Headers are
encoded by Python's ``tarfile``; bodies are written straight to the spool so
that each member's data offset is known exactly.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO

from batcher.membernames import member_names
from batcher.models import StagedObject

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
SPOOL_MEMORY_BYTES = 8 * 1024 * 1024
FORMAT_VERSION = 1
_MODE = 0o644


@dataclass(frozen=True)
class Member:
    """Where one object's bytes sit in the tar."""

    record_id: str
    object_key: str
    name: str
    offset: int
    size: int
    sha256: str


@dataclass
class BuiltTar:
    """A finished tar: a readable spooled file positioned at 0, its size, SHA-256 and members."""

    file: IO[bytes]
    size: int
    sha256: str
    members: list[Member]

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> BuiltTar:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def pax_comment(obj: StagedObject, name: str) -> str | None:
    """The member's s3batch facts as JSON for the standard pax ``comment`` record (readers ignore it)."""
    facts: dict[str, object] = {}
    if name != obj.object_key:
        facts["key"] = obj.object_key
    if obj.content_type:
        facts["content_type"] = obj.content_type
    if obj.metadata:
        facts["metadata"] = dict(obj.metadata)
    if not facts:
        return None
    return json.dumps({"s3batch": FORMAT_VERSION, **facts}, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def member_header(obj: StagedObject, name: str) -> bytes:
    """The tar header blocks (pax extended header included when needed) for one object."""
    info = tarfile.TarInfo(name)
    info.size = obj.size
    info.mtime = obj.staged_ms // 1000
    info.mode = _MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    comment = pax_comment(obj, name)
    if comment is not None:
        info.pax_headers = {"comment": comment}
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def build_tar(
    keys: Sequence[str], objects: Iterable[StagedObject], spool_memory_bytes: int = SPOOL_MEMORY_BYTES
) -> BuiltTar:
    """Write the tar of ``objects`` (whose keys, in order, are ``keys``) into a spooled file."""
    names = member_names(keys)
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=spool_memory_bytes)  # noqa: SIM115
    digest = hashlib.sha256()
    offset = 0
    members: list[Member] = []

    def write(data: bytes) -> None:
        nonlocal offset
        spool.write(data)
        digest.update(data)
        offset += len(data)

    try:
        for index, obj in enumerate(objects):
            name = names[index]
            write(member_header(obj, name))
            members.append(Member(obj.record_id, obj.object_key, name, offset, obj.size, obj.sha256))
            write(obj.body)
            remainder = obj.size % BLOCK
            if remainder:
                write(bytes(BLOCK - remainder))
        if len(members) != len(names):
            raise ValueError(f"build_tar got {len(members)} objects for {len(names)} keys")
        write(bytes(2 * BLOCK))  # end-of-archive marker
        remainder = offset % RECORD
        if remainder:
            write(bytes(RECORD - remainder))
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return BuiltTar(spool, offset, digest.hexdigest(), members)
