"""extract_batch against moto's S3 server: exact keys, all or nothing, never outside the target."""

from __future__ import annotations

import json
import os
import stat
import tracemalloc
from pathlib import Path

import pytest

from batcher import BatchReader, BatchRef
from batcher.errors import ChecksumMismatchError, CorruptedBatchError
from batcher.extract import MANIFEST_NAME, ExtractResult, _Tree, extract_batch
from batcher.index import INDEX_NAME
from batcher.models import StagedObject
from tests.support import Stack
from tests.test_reader import obj, upload

KEY = "batches/2025/01/02/03/01JEXTRACT.tar"
OBJECTS = [
    obj("users/42/avatar.png", b"\x89PNG" * 300, 0, "image/png", {"owner": "42"}),
    obj("../../etc/passwd", b"root:x:0:0", 1),
    obj("/absolute/path", b"abs", 2),
    obj("dup", b"first", 3),
    obj("dup", b"second", 4),
    obj(INDEX_NAME, b"a user key that looks like the index", 5),
    obj("line\nbreak\u2028", b"", 6),
    obj("a", b"a file", 7),
    obj("a/b", b"a file under a directory named like a file", 8),
    obj("users/42/z", b"z" * 700, 9, "text/plain"),
]


@pytest.fixture
def batch(stack: Stack) -> list[BatchRef]:
    return upload(stack, KEY, OBJECTS, batch_id="01JEXTRACT")


def files_under(root: Path) -> dict[str, bytes]:
    found = {}
    for path in root.rglob("*"):
        assert not path.is_symlink()
        if path.is_file():
            found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found


def test_extract_writes_every_object_at_its_member_name_with_a_manifest(
    stack: Stack, batch: list[BatchRef], tmp_path: Path
) -> None:
    out = tmp_path / "deep" / "out"
    progress: list[tuple[int, int]] = []
    result = extract_batch(BatchReader(stack.s3), batch[0].bucket, KEY, out, progress=lambda *p: progress.append(p))
    size = sum(o.size for o in OBJECTS)
    assert result == ExtractResult(out, len(OBJECTS), size, out / MANIFEST_NAME)
    assert progress[-1][0] == progress[-1][1] == len(stack.tar_bytes(KEY))
    files = files_under(out)
    lines = files.pop(MANIFEST_NAME).decode().split("\n")
    assert lines.pop() == "" and all("\u2028" not in line for line in lines)  # any line splitter works
    manifest = [json.loads(line) for line in lines]
    assert [row["key"] for row in manifest] == [o.object_key for o in OBJECTS]
    assert {row["path"]: files[row["path"]] for row in manifest} == files  # every file is in the manifest
    for row, o, ref in zip(manifest, OBJECTS, batch, strict=True):
        assert files[row["path"]] == o.body
        assert (row["offset"], row["size"], row["sha256"]) == (ref.offset, ref.size, ref.sha256)
        assert (row["content_type"], row["metadata"]) == (o.content_type, o.metadata)
    assert files["users/42/avatar.png"] == OBJECTS[0].body  # safe keys keep their path
    assert files["%2E%2E/%2E%2E/etc/passwd"] == b"root:x:0:0"
    assert [p.name for p in tmp_path.iterdir()] == ["deep"] and [p.name for p in out.parent.iterdir()] == ["out"]
    umask = os.umask(0o22)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
    assert stat.S_IMODE((out / "users/42/z").stat().st_mode) == 0o644 & ~umask


def test_an_empty_directory_is_replaced_and_anything_else_refused(
    stack: Stack, batch: list[BatchRef], tmp_path: Path
) -> None:
    reader = BatchReader(stack.s3)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert extract_batch(reader, batch[0].bucket, KEY, empty).objects == len(OBJECTS)
    assert (empty / "users/42/z").read_bytes() == b"z" * 700
    full, file, link, aim = tmp_path / "full", tmp_path / "file", tmp_path / "link", tmp_path / "aim"
    full.mkdir()
    (full / "mine").write_bytes(b"keep")
    file.write_bytes(b"keep")
    aim.mkdir()
    link.symlink_to(aim)
    for target, reason in ((full, "is not empty"), (file, "is not a directory"), (link, "is a symlink")):
        with pytest.raises(FileExistsError, match=reason):
            extract_batch(reader, batch[0].bucket, KEY, target)
    assert (full / "mine").read_bytes() == file.read_bytes() == b"keep" and list(aim.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aim", "empty", "file", "full", "link"]  # no leftovers


@pytest.mark.parametrize("damage", ["object", "tar digest", "index"])
def test_a_damaged_batch_extracts_nothing(stack: Stack, batch: list[BatchRef], tmp_path: Path, damage: str) -> None:
    data = bytearray(stack.tar_bytes(KEY))
    head = stack.s3.head_object(Bucket=batch[0].bucket, Key=KEY)
    if damage == "object":
        data[batch[8].offset] ^= 1  # late in the batch: earlier objects were written already
    elif damage == "tar digest":
        data[-1] = 1  # record padding: only the tar's own SHA-256 covers it
    else:
        data[bytes(data).index(b'"users/42/z"') + 2] ^= 1  # the index, and so its SHA-256 in the trailer
    stack.s3.put_object(Bucket=batch[0].bucket, Key=KEY, Body=bytes(data), Metadata=head["Metadata"])
    out = tmp_path / "parent" / "out"
    error = ChecksumMismatchError if damage != "index" else CorruptedBatchError
    with pytest.raises(error, match=r"uploaded as|nothing was extracted|trailer"):
        extract_batch(BatchReader(stack.s3), batch[0].bucket, KEY, out)
    assert list(out.parent.iterdir()) == []  # no target and no temporary directory


def test_an_interrupted_extract_leaves_nothing(stack: Stack, batch: list[BatchRef], tmp_path: Path) -> None:
    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_batch(BatchReader(stack.s3), batch[0].bucket, KEY, tmp_path / "out", progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_extract_holds_no_object_in_memory(stack: Stack, tmp_path: Path) -> None:
    big = StagedObject("r", "big", b"\5" * 24 * 1024 * 1024, 1, "")
    refs = upload(stack, "r/big.tar", [obj("small", b"s", 0), obj(big.object_key, big.body, 1)])
    tracemalloc.start()
    try:
        extract_batch(BatchReader(stack.s3), refs[0].bucket, "r/big.tar", tmp_path / "out")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024 and (tmp_path / "out/big").stat().st_size == 24 * 1024 * 1024


def test_the_tree_refuses_collisions_and_symlinks(tmp_path: Path) -> None:
    """What the stream refuses already; the tree must not rely on it (case-insensitive file systems)."""
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    with _Tree(root) as tree:
        with tree.create("a/b") as file:
            file.write(b"1")
        for name in ("a/b", "a", "a/b/c", "../x", "/x"):
            with pytest.raises(CorruptedBatchError), tree.create(name):
                pass
        (root / "link").symlink_to(tmp_path / "outside")
        (root / "file-link").symlink_to(tmp_path / "outside" / "f")
        for name in ("link/x", "file-link"):
            with pytest.raises(CorruptedBatchError, match="collides"), tree.create(name):
                pass
    assert list((tmp_path / "outside").iterdir()) == []
