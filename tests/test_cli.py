"""The reading subcommands of the ``s3batch`` command line against moto's S3 server."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batcher.cli import MANIFEST, main
from batcher.index import INDEX_NAME
from batcher.models import BatchRef
from tests.support import Stack
from tests.test_reader import obj, upload

KEY = "batches/2025/01/02/03/01JCLI.tar"
OBJECTS = [
    obj("users/42/avatar.png", b"\x89PNG" * 300, 0, "image/png", {"owner": "42"}),
    obj("../../etc/passwd", b"root:x:0:0", 1),
    obj("/absolute/path", b"abs", 2),
    obj("dup", b"first", 3),
    obj("dup", b"second", 4),
    obj(INDEX_NAME, b"a user key that looks like the index", 5),
    obj("line\nbreak", b"", 6),
    obj("a#b.tar#c", b"hash signs", 7, "text/plain"),
]


@pytest.fixture
def batch(stack: Stack) -> list[BatchRef]:
    return upload(stack, KEY, OBJECTS, batch_id="01JCLI")


def url(ref: BatchRef) -> str:
    return f"s3://{ref.bucket}/{ref.key}"


def test_ls_prints_a_table_and_json_lines(
    batch: list[BatchRef], capsys: pytest.CaptureFixture[str], stack: Stack
) -> None:
    assert main(["ls", url(batch[0])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{url(batch[0])}: batch 01JCLI, 8 objects, created ")
    assert lines[1].split() == ["offset", "size", "content", "type", "key"]
    assert lines[2].split() == [str(batch[0].offset), "1200", "image/png", "users/42/avatar.png"]
    assert lines[8].split() == [str(batch[6].offset), "0", "-", '"line\\nbreak"']  # control characters quoted
    assert main(["ls", "--json", url(batch[0])]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [BatchRef.from_dict(row) for row in rows] == batch
    assert rows[0]["content_type"] == "image/png" and rows[0]["metadata"] == {"owner": "42"}
    assert rows[5]["name"] == "%2Es3batch/index.jsonl"  # a key never takes the index's name


def test_get_by_json_ref_stdin_and_key(
    batch: list[BatchRef],
    capsysbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    assert main(["get", json.dumps(batch[0].to_dict())]) == 0
    assert capsysbinary.readouterr().out == OBJECTS[0].body
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(batch[1].to_dict()) + "\n"))
    assert main(["get", "-"]) == 0
    assert capsysbinary.readouterr().out == b"root:x:0:0"
    assert main(["get", f"{url(batch[0])}#dup", "-o", str(tmp_path / "dup")]) == 0
    assert (tmp_path / "dup").read_bytes() == b"second"  # the last of a repeated key, as in S3
    assert main(["get", f"{url(batch[0])}#a#b.tar#c"]) == 0
    assert capsysbinary.readouterr().out == b"hash signs"


def test_get_errors(batch: list[BatchRef], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["get", f"{url(batch[0])}#no/such/key"]) == 1
    assert "holds no object with key 'no/such/key'" in capsys.readouterr().err
    assert main(["get", "not a ref"]) == 1
    assert "REF must be" in capsys.readouterr().err
    assert main(["get", '{"bucket": "b"}']) == 1
    assert "lacks" in capsys.readouterr().err
    assert main(["get", f"s3://{batch[0].bucket}/no/such.tar#k"]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["ls", "bucket/key.tar"])
    assert exit_info.value.code == 2
    assert "expected s3://BUCKET/KEY.tar" in capsys.readouterr().err


def test_extract_writes_exact_keys_safely(
    batch: list[BatchRef], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "deep" / "out"
    assert main(["extract", url(batch[0]), str(out)]) == 0
    assert "extracted 8 objects" in capsys.readouterr().err
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    manifest = [json.loads(line) for line in files.pop(MANIFEST).decode().splitlines()]
    assert [row["key"] for row in manifest] == [o.object_key for o in OBJECTS]
    assert {row["path"]: files[row["path"]] for row in manifest} == files  # every file is in the manifest
    for row, o in zip(manifest, OBJECTS, strict=True):
        assert files[row["path"]] == o.body
        assert (row["content_type"], row["metadata"]) == (o.content_type, o.metadata)
    assert files["users/42/avatar.png"] == OBJECTS[0].body  # safe keys keep their path
    assert files["%2E%2E/%2E%2E/etc/passwd"] == b"root:x:0:0"
    assert not (tmp_path / "etc").exists() and [p.name for p in tmp_path.iterdir()] == ["deep"]


def test_extract_refuses_a_symlink_out_of_the_directory(batch: list[BatchRef], tmp_path: Path) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "users").symlink_to(outside)
    assert main(["extract", "--no-progress", url(batch[0]), str(out)]) == 1
    assert list(outside.iterdir()) == []


def test_verify_exit_status(batch: list[BatchRef], stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", url(batch[0])]) == 0
    assert "intact: 8 objects" in capsys.readouterr().out
    data = bytearray(stack.tar_bytes(KEY))
    data[batch[3].offset] ^= 0x20
    head = stack.s3.head_object(Bucket=batch[0].bucket, Key=KEY)
    stack.s3.put_object(Bucket=batch[0].bucket, Key=KEY, Body=bytes(data), Metadata=head["Metadata"])
    assert main(["verify", url(batch[0])]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED (2 problems after 8 objects)" in out  # the object, and so the whole tar's digest
    assert f"'dup' at {batch[3].range}" in out


def test_console_script_exit_status(batch: list[BatchRef], stack: Stack) -> None:
    script = Path(sys.executable).parent / "s3batch"
    intact = subprocess.run([script, "verify", url(batch[0])], capture_output=True, env=os.environ, timeout=60)
    assert (intact.returncode, intact.stderr) == (0, b"")
    missing = subprocess.run([script, "verify", url(batch[0]) + "x"], capture_output=True, timeout=60)
    assert missing.returncode == 1 and b"does not exist" in missing.stderr


def test_existing_commands_still_work(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3BATCH_REDIS_URL", stack.settings.redis_url)
    assert main(["dead-letters", "--json"]) == 0
    assert main(["retry"]) == 2
