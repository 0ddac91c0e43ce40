"""Extract a whole batch into a directory, all or nothing, with a manifest of the exact keys.

Objects are written as they stream (no object is held in memory) into a new
temporary directory next to the target, and that directory is renamed into
place only after every object's SHA-256, name and uniqueness, the index, the
trailer and the tar's digest were checked. On any failure the temporary
directory is removed and the target is left as it was. Files are created with
``O_EXCL | O_NOFOLLOW`` relative to directory descriptors opened with
``O_NOFOLLOW``, so no symlink is ever followed and no name, however it reads,
is written outside the target. ``.s3batch/manifest.jsonl`` maps each exact key
to its path (no object member is ever named under ``.s3batch/``).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from batcher.errors import ChecksumMismatchError, CorruptedBatchError
from batcher.index import ObjectInfo
from batcher.membernames import RESERVED_DIR
from batcher.printable import printable, quoted
from batcher.reader import BatchReader
from batcher.tarheader import check_name
from batcher.tarstream import MemberData, Progress

MANIFEST_NAME = f"{RESERVED_DIR}/manifest.jsonl"
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_LINE_BREAKS = {ord(ch): f"\\u{ord(ch):04x}" for ch in "\x85\u2028\u2029"}  # as in the index: any splitter works


@dataclass(frozen=True)
class ExtractResult:
    """What ``extract_batch`` wrote: objects and bytes of data under ``directory``, and the manifest's path."""

    directory: Path
    objects: int
    bytes_written: int
    manifest: Path


def extract_batch(
    reader: BatchReader,
    bucket: str,
    key: str,
    directory: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
) -> ExtractResult:
    """Write every object of the batch at its member name under ``directory``, or nothing at all.

    ``directory`` must not exist, or be an empty directory (which is then replaced by the extracted
    tree); its parents are created. Raises FileExistsError when it exists otherwise (a file, a symlink,
    a directory that is not empty), the ReadErrors of ``BatchReader.stream`` (CorruptedBatchError also
    for a member that would collide with an earlier one on this file system, such as names that differ
    only in case on a case-insensitive one; ChecksumMismatchError for an object, or the tar, that does
    not have its SHA-256) and OSError from the file system (disk full, permissions).
    """
    target = Path(os.path.abspath(directory))
    _check_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".s3batch-partial", dir=target.parent))
    try:
        objects, size = _extract_into(reader, bucket, key, temporary, progress)
        _move_into_place(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return ExtractResult(target, objects, size, target / MANIFEST_NAME)


def _check_target(target: Path) -> None:
    """FileExistsError unless ``target`` is missing or an empty directory (not a symlink to one)."""
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        problem = "is a symlink (extract never follows symlinks)"
    elif not stat.S_ISDIR(mode):
        problem = "exists and is not a directory"
    elif os.listdir(target):
        problem = "exists and is not empty"
    else:
        return
    raise FileExistsError(
        errno.EEXIST, f"{printable(str(target))} {problem}: extract into a new or empty directory", str(target)
    )


def _extract_into(reader: BatchReader, bucket: str, key: str, root: Path, progress: Progress | None) -> tuple[int, int]:
    """Stream the batch into ``root`` (new and empty); (objects, bytes) once every check passed."""
    objects = size = 0
    with _Tree(root) as tree, tree.create(MANIFEST_NAME) as manifest:
        stream = reader.stream(bucket, key, progress=progress)
        for info, member in stream:
            with tree.create(info.name) as file:
                _write(file, info, member, stream.where)
            manifest.write(_manifest_line(info).encode("utf-8"))
            objects += 1
            size += member.size
        stream.check_tar_digest()
    os.chmod(root, 0o777 & ~_umask())  # mkdtemp made it 0700: now the mode that mkdir would have given
    return objects, size


def _write(file: IO[bytes], info: ObjectInfo, member: MemberData, where: str) -> None:
    for chunk in member.chunks():
        file.write(chunk)
    if member.hexdigest() != info.ref.sha256:
        raise ChecksumMismatchError(
            f"{quoted(info.ref.object_key)} at byte {info.ref.offset:,} of {where} has sha256 {member.hexdigest()}, "
            f"expected {info.ref.sha256}; nothing was extracted"
        )


def _manifest_line(info: ObjectInfo) -> str:
    ref = info.ref
    row = {
        "key": ref.object_key, "path": info.name, "offset": ref.offset, "size": ref.size, "sha256": ref.sha256,
        "content_type": info.content_type, "metadata": dict(info.metadata),
    }  # fmt: skip
    return json.dumps(row, ensure_ascii=False).translate(_LINE_BREAKS) + "\n"


def _move_into_place(temporary: Path, target: Path) -> None:
    """Rename the finished tree to ``target`` (replacing an empty directory, atomically)."""
    try:
        os.rename(temporary, target)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise FileExistsError(
                exc.errno,
                f"{printable(str(target))} appeared while the batch was extracted: extract into a new directory",
                str(target),
            ) from exc
        raise


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (setting it races other threads)."""
    with suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii", errors="replace") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


class _Tree:
    """Creates files under one directory through descriptors, never following a symlink.

    The descriptor of the last file's directory is kept open: members of a batch come in key order,
    so consecutive files usually share their directory.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_fd = -1
        self._cached: tuple[str, int] | None = None

    def __enter__(self) -> _Tree:
        self._root_fd = os.open(self.root, _DIRECTORY_FLAGS)
        return self

    def __exit__(self, *_: object) -> None:
        self._forget()
        os.close(self._root_fd)

    @contextmanager
    def create(self, name: str) -> Iterator[IO[bytes]]:
        """A new file at the relative path ``name``; CorruptedBatchError for a name that exists or is unsafe."""
        check_name(name, "a member")  # checked by the stream already; this module must not rely on it
        folder, _, leaf = name.rpartition("/")
        try:
            fd = os.open(leaf, _FILE_FLAGS, 0o644, dir_fd=self._directory(folder))
        except (FileExistsError, IsADirectoryError, NotADirectoryError) as exc:
            raise _collision(name) from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _collision(name) from exc
            raise
        with open(fd, "wb") as file:
            yield file

    def _directory(self, folder: str) -> int:
        """A descriptor of ``folder`` (relative, "" for the root), made where missing, one segment at a time."""
        if not folder:
            return self._root_fd
        if self._cached is not None and self._cached[0] == folder:
            return self._cached[1]
        self._forget()
        fd = self._root_fd
        try:
            for segment in folder.split("/"):
                with suppress(FileExistsError):
                    os.mkdir(segment, 0o777, dir_fd=fd)
                try:
                    inner = os.open(segment, _DIRECTORY_FLAGS, dir_fd=fd)
                except (NotADirectoryError, FileNotFoundError) as exc:
                    raise _collision(folder) from exc
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise _collision(folder) from exc
                    raise
                if fd != self._root_fd:
                    os.close(fd)
                fd = inner
        except BaseException:
            if fd != self._root_fd:
                os.close(fd)
            raise
        self._cached = (folder, fd)
        return fd

    def _forget(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None


def _collision(name: str) -> CorruptedBatchError:
    return CorruptedBatchError(
        f"member {quoted(name)} collides with an earlier member on this file system (the same name, a file "
        "where a directory is needed, or names that differ only in case on a case-insensitive file system); "
        "nothing was extracted"
    )
