"""The deterministic tar writer: exact offsets, standard tar readers, spooling (guarantees 1, 2, 6, 8)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batcher.index import INDEX_NAME, TRAILER_NAME, IndexEntry
from batcher.models import StagedObject
from batcher.tarwriter import BuiltTar, _tarfile_member_header, build_tar, member_header

STAGED_MS = 1_700_000_000_987  # a fixed past instant: GNU tar warns about time stamps in the future
CREATED_MS = STAGED_MS + 60_000
BATCH_ID = "01JTESTBATCH00000000000000"
OWN_MEMBERS = [INDEX_NAME, TRAILER_NAME]  # the batch's own members, after the objects
GNU_TAR = "tar"
BSDTAR = "/usr/bin/bsdtar"
# libarchive converts UTF-8 member names to the locale's charset and fails in the C locale.
TOOL_ENV = {**os.environ, "LC_ALL": "C.UTF-8"}

SIZES = [0, 1, 511, 512, 513, 100_000]
TRICKY_KEYS = [
    "/leading/slash",
    "//double//slashes",
    "trailing/",
    "..",
    "../../etc/passwd",
    "line\nbreak",
    "  spaces  around  ",
    "ünïcødé/日本語/😀.txt",
    "k" * 1024,
    "dup",
    "dup",
    "a",
    "a/b",
    "users/42/avatar.png",
]


def staged(key: str, body: bytes, index: int, **attrs: Any) -> StagedObject:
    """A staged object with a fixed staging time (one millisecond apart) and its real SHA-256."""
    return StagedObject(
        record_id=f"rec-{index}",
        object_key=key,
        body=body,
        staged_ms=STAGED_MS + index,
        sha256=hashlib.sha256(body).hexdigest(),
        **attrs,
    )


def make_batch() -> list[StagedObject]:
    """Objects of awkward sizes, then tricky keys; bodies are distinct pseudo-random bytes."""
    rng = random.Random(1234)
    objects = [staged(f"sizes/{size}.bin", rng.randbytes(size), i) for i, size in enumerate(SIZES)]
    for key in TRICKY_KEYS:
        objects.append(staged(key, rng.randbytes(rng.randrange(1, 2000)), len(objects)))
    objects.append(
        staged("with/attrs", b"{}", len(objects), content_type="application/json", metadata={"owner": "alice"})
    )
    return objects


def build(objects: Sequence[StagedObject], **kwargs: Any) -> tuple[BuiltTar, bytes]:
    """Build the tar and read it whole; the BuiltTar is closed."""
    built = build_tar([obj.object_key for obj in objects], objects, batch_id=BATCH_ID, created_ms=CREATED_MS, **kwargs)
    try:
        assert built.file.tell() == 0
        data = built.file.read()
    finally:
        built.close()
    return built, data


@pytest.fixture(scope="module")
def objects() -> list[StagedObject]:
    return make_batch()


@pytest.fixture(scope="module")
def built(objects: list[StagedObject]) -> tuple[BuiltTar, bytes]:
    return build(objects)


@pytest.fixture
def tar_path(built: tuple[BuiltTar, bytes], tmp_path: Path) -> Path:
    path = tmp_path / "batch.tar"
    path.write_bytes(built[1])
    return path


def expected_files(built: BuiltTar, objects: Sequence[StagedObject], data: bytes) -> dict[str, bytes]:
    """What extracting the tar must give: every object at its member name, and the index and trailer."""
    files = {member.name: obj.body for member, obj in zip(built.members, objects, strict=True)}
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for name in OWN_MEMBERS:
            files[name] = archive.extractfile(name).read()  # type: ignore[union-attr]
    return files


def files_under(root: Path) -> dict[str, bytes]:
    """Every regular file below ``root``, by relative path; fails on anything else but directories."""
    found: dict[str, bytes] = {}
    for path in root.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            continue
        assert path.is_file() and not path.is_symlink(), path
        found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found


def run_tool(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    """Run a tar program; fail unless it exits 0 and writes nothing to stderr."""
    result = subprocess.run([str(arg) for arg in args], capture_output=True, env=TOOL_ENV, timeout=60)
    assert result.returncode == 0, (args, result.returncode, result.stderr)
    assert result.stderr == b"", (args, result.stderr)
    return result


# ---- (1) exact offsets ----


def test_every_member_body_sits_at_its_offset(objects: list[StagedObject], built: tuple[BuiltTar, bytes]) -> None:
    tar, data = built
    assert len(tar.members) == len(objects)
    for member, obj in zip(tar.members, objects, strict=True):
        assert (member.key, member.size, member.sha256) == (obj.object_key, obj.size, obj.sha256)
        assert member.offset % tarfile.BLOCKSIZE == 0
        assert data[member.offset : member.offset + member.size] == obj.body


def test_offsets_agree_with_tarfile(built: tuple[BuiltTar, bytes]) -> None:
    tar, data = built
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        infos = archive.getmembers()
    assert [(i.name, i.offset_data, i.size) for i in infos[:-2]] == [(m.name, m.offset, m.size) for m in tar.members]
    assert [i.name for i in infos[-2:]] == OWN_MEMBERS
    assert (infos[-2].offset_data, infos[-2].size) == (tar.index.offset, tar.index.size)


def test_an_object_costs_three_header_blocks() -> None:
    """A pax header (its facts, with the SHA-256) and the ustar header: 1 KiB of data takes 2.5 KiB."""
    tar, _ = build([staged("users/42/avatar.png", b"x" * 1024, 0)])
    assert tar.members[0].offset == 3 * tarfile.BLOCKSIZE


# ---- (2) size and digest ----


def test_size_is_whole_records_and_sha256_matches(built: tuple[BuiltTar, bytes]) -> None:
    tar, data = built
    assert tar.size == len(data)
    assert len(data) % tarfile.RECORDSIZE == 0
    assert tar.sha256 == hashlib.sha256(data).hexdigest()
    trailer_end = tar.index.offset + tar.index.size + 3 * tarfile.BLOCKSIZE  # < 512 bytes of index padding
    assert not any(data[trailer_end:]) and len(data) - trailer_end >= 2 * tarfile.BLOCKSIZE


def test_empty_batch_is_an_index_and_a_trailer() -> None:
    tar, data = build([])
    assert tar.members == []
    assert len(data) == tarfile.RECORDSIZE
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert archive.getnames() == OWN_MEMBERS


def test_key_count_must_match_object_count() -> None:
    obj = staged("k", b"v", 0)
    with pytest.raises(ValueError, match="objects"):
        build_tar(["k", "k2"], [obj], batch_id=BATCH_ID, created_ms=CREATED_MS)


# ---- (3) determinism ----


def test_building_twice_gives_identical_bytes(objects: list[StagedObject], built: tuple[BuiltTar, bytes]) -> None:
    again, data = build(list(objects))
    assert data == built[1]
    assert again.sha256 == built[0].sha256
    assert again.members == built[0].members


def test_batch_id_and_creation_time_change_the_bytes(
    objects: list[StagedObject], built: tuple[BuiltTar, bytes]
) -> None:
    keys = [obj.object_key for obj in objects]
    variants: list[dict[str, Any]] = [
        {"batch_id": "01JOTHER", "created_ms": CREATED_MS},
        {"batch_id": BATCH_ID, "created_ms": 1},
    ]
    for kwargs in variants:
        with build_tar(keys, objects, **kwargs) as other:
            assert other.sha256 != built[0].sha256
            assert other.members == built[0].members


def test_staging_time_changes_the_bytes(objects: list[StagedObject], built: tuple[BuiltTar, bytes]) -> None:
    later = [staged(obj.object_key, obj.body, i + 5000) for i, obj in enumerate(objects)]
    assert build(later)[1] != built[1]


# ---- (4) Python tarfile ----


def test_tarfile_data_filter_extracts_everything(
    objects: list[StagedObject], built: tuple[BuiltTar, bytes], tar_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with tarfile.open(tar_path) as archive:
        archive.extractall(out, filter="data")
    assert files_under(out) == expected_files(built[0], objects, built[1])


def test_exact_key_is_recoverable_from_pax_comment(objects: list[StagedObject], tar_path: Path) -> None:
    with tarfile.open(tar_path) as archive:
        infos = archive.getmembers()
    renamed: list[str] = []
    for info, obj in zip(infos[:-2], objects, strict=True):
        facts = json.loads(info.pax_headers["comment"])
        assert facts["sha256"] == obj.sha256
        if info.name != obj.object_key:
            renamed.append(obj.object_key)
            assert facts["key"] == obj.object_key
        else:
            assert "key" not in facts
    # The unsafe keys, the 1024-byte one (segment too long), the second "dup" and "a" (a directory too).
    assert renamed == [*TRICKY_KEYS[:6], "k" * 1024, "dup", "a"]


def test_pax_comment_carries_content_type_and_metadata(tar_path: Path) -> None:
    with tarfile.open(tar_path) as archive:
        info = archive.getmember("with/attrs")
    facts = json.loads(info.pax_headers["comment"])
    assert facts == {
        "s3batch": 1,
        "content_type": "application/json",
        "metadata": {"owner": "alice"},
        "sha256": hashlib.sha256(b"{}").hexdigest(),
    }


# ---- (5) GNU tar and bsdtar ----


def test_gnu_tar_is_gnu() -> None:
    assert b"GNU tar" in run_tool(GNU_TAR, "--version").stdout


def test_gnu_tar_lists_and_extracts(
    objects: list[StagedObject], built: tuple[BuiltTar, bytes], tar_path: Path, tmp_path: Path
) -> None:
    run_tool(GNU_TAR, "-tvf", tar_path)
    names = run_tool(GNU_TAR, "--quoting-style=literal", "-tf", tar_path).stdout.decode().splitlines()
    assert names == [member.name for member in built[0].members] + OWN_MEMBERS
    out = tmp_path / "gnu"
    out.mkdir()
    run_tool(GNU_TAR, "-xf", tar_path, "-C", out)
    assert files_under(out) == expected_files(built[0], objects, built[1])


def test_bsdtar_lists_and_extracts(
    objects: list[StagedObject], built: tuple[BuiltTar, bytes], tar_path: Path, tmp_path: Path
) -> None:
    run_tool(BSDTAR, "-tvf", tar_path)
    names = run_tool(BSDTAR, "-tf", tar_path).stdout.decode().splitlines()
    assert names == [member.name for member in built[0].members] + OWN_MEMBERS
    out = tmp_path / "bsd"
    out.mkdir()
    run_tool(BSDTAR, "-xf", tar_path, "-C", out)
    assert files_under(out) == expected_files(built[0], objects, built[1])


# ---- (6) header fields ----


def test_headers_are_fixed_and_mtime_is_staging_time(objects: list[StagedObject], tar_path: Path) -> None:
    with tarfile.open(tar_path) as archive:
        infos = archive.getmembers()
    for info, obj in zip(infos[:-2], objects, strict=True):
        assert info.isreg()
        assert info.mtime == obj.staged_ms // 1000
        assert info.mode == 0o644
        assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")
    assert len({info.mtime for info in infos[:-2]}) == 2  # staging times straddle a second: each has its own
    for info in infos[-2:]:  # the index and trailer: the batch's creation time
        assert (info.isreg(), info.mtime, info.mode, info.uid, info.gid) == (True, CREATED_MS // 1000, 0o644, 0, 0)
        assert info.pax_headers == {}


# ---- (7) spooling ----


def test_small_spool_rolls_to_disk_with_the_same_result(
    objects: list[StagedObject], built: tuple[BuiltTar, bytes]
) -> None:
    spooled = build_tar(
        [obj.object_key for obj in objects], objects, batch_id=BATCH_ID, created_ms=CREATED_MS, spool_memory_bytes=4096
    )
    try:
        assert spooled.file._rolled  # type: ignore[attr-defined]
        data = spooled.file.read()
    finally:
        spooled.close()
    assert data == built[1]
    assert (spooled.size, spooled.sha256, spooled.members, spooled.index) == (
        built[0].size,
        built[0].sha256,
        built[0].members,
        built[0].index,
    )


def test_default_spool_keeps_a_small_batch_in_memory(objects: list[StagedObject]) -> None:
    tar = build_tar([obj.object_key for obj in objects], objects, batch_id=BATCH_ID, created_ms=CREATED_MS)
    try:
        assert not tar.file._rolled  # type: ignore[attr-defined]
    finally:
        tar.close()


# ---- names at the file system's limits ----


def test_keys_at_the_segment_limit_extract_everywhere(tmp_path: Path) -> None:
    """255 bytes is the most a segment may have; renaming a clash must not push it past that."""
    keys = ["s" * 255, "s" * 255, "d/" + "é" * 127 + "x", "d/" + "é" * 127 + "x/child"]
    objects = [staged(key, key.encode()[-8:] + bytes([i]), i) for i, key in enumerate(keys)]
    tar, data = build(objects)
    path = tmp_path / "limits.tar"
    path.write_bytes(data)
    expected = expected_files(tar, objects, data)
    with tarfile.open(path) as archive:
        archive.extractall(tmp_path / "py", filter="data")
    assert files_under(tmp_path / "py") == expected
    for tool in (GNU_TAR, BSDTAR):
        out = tmp_path / Path(tool).name
        out.mkdir()
        run_tool(tool, "-xf", path, "-C", out)
        assert files_under(out) == expected


@settings(max_examples=300, deadline=None)
@given(
    name=st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=300),
    size=st.one_of(st.integers(0, 4096), st.integers(8**11 - 2, 8**11 + 2)),
    staged_ms=st.one_of(st.integers(0, 2_000_000_000_000), st.just(8**11 * 1000)),
    content_type=st.one_of(st.none(), st.text(max_size=40)),
    metadata=st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=300), max_size=3),
)
def test_member_header_is_byte_for_byte_tarfiles(
    name: str, size: int, staged_ms: int, content_type: str | None, metadata: dict[str, str]
) -> None:
    """The hand-built header (a per-object hot path) must equal tarfile's PAX_FORMAT, so batches never change."""
    sized = StagedObject("r", "key/" + name, b"", staged_ms, "ab" * 32, content_type, metadata, size=size)
    entry = IndexEntry(sized.object_key, name, 0, size, sized.sha256, content_type, metadata)
    assert member_header(sized, name) == _tarfile_member_header(sized, name, entry)
