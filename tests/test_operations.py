"""s3batch stats, cost and put: operator commands against real Redis, S3 and workers."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from dataclasses import replace
from pathlib import Path

import pytest

from batcher.cli import main
from batcher.flush import Flusher
from batcher.uploader import Uploader
from tests.factories import stage_with, staged
from tests.support import Stack
from tests.test_flush import Recorder


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batcher.cli", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_cost_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "--objects", "1000000", "--size", "1024", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["batch_objects"], r["put_requests"]) for r in rows] == [
        (1, 1_000_000), (100, 10_000), (1000, 1000), (10_000, 100),
    ]  # fmt: skip
    assert rows[0]["put_usd"] == pytest.approx(5.0) and rows[-1]["put_usd"] == pytest.approx(0.0005)
    assert main(["cost", "--objects", "1000", "--size", "10"]) == 0
    assert "1 (naive)" in capsys.readouterr().out


def test_cost_in_a_storage_class_bills_the_minimum_size_and_the_transitions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "--objects", "1000000", "--size", "1024", "--storage-class", "standard_ia", "--json"]) == 0
    naive, *_, batched = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert naive["storage_class"] == "STANDARD_IA" and naive["put_usd"] == pytest.approx(10.0)
    assert naive["billed_bytes"] == 1_000_000 * 128 * 1024  # 128 KiB billed for each 1 KiB object
    assert naive["transition_usd"] == pytest.approx(10.0) and batched["transition_usd"] == pytest.approx(0.001)
    assert batched["billed_bytes"] == batched["stored_bytes"]  # a batch is far above the minimum
    assert main(["cost", "--objects", "10", "--size", "10", "--storage-class", "DEEP_ARCHIVE", "--json"]) == 0
    archived = json.loads(capsys.readouterr().out.splitlines()[0])
    assert archived["billed_bytes"] == 10 * (10 + 40 * 1024)  # 32 KiB at the class's rate, 8 KiB at Standard's
    with pytest.raises(SystemExit):
        main(["cost", "--objects", "1", "--size", "1", "--storage-class", "GLACIAR"])
    assert "invalid choice: 'GLACIAR'" in capsys.readouterr().err


def test_stats_counts_waiting_and_uploaded(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("S3BATCH_REDIS_URL", stack.settings.redis_url)
    limits = {"max_staged_bytes": 10**9, "max_batch_bytes": 10**9, "max_batch_objects": 10**6}
    stage_with(stack.staging, [staged(f"k{i}", b"x" * 100) for i in range(30)], **limits)
    chosen = replace(stack.settings, max_batch_objects=10)
    flusher = Flusher(chosen, stack.lanes_for(chosen), Uploader(stack.s3), Recorder())
    assert len(flusher.flush(force=True)) == 3
    stage_with(stack.staging, [staged("waiting", b"y" * 7)], **limits)
    assert main(["stats", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["uploaded_objects"] == 30 and figures["uploaded_batches"] == 3
    assert figures["uploaded_bytes"] == 3000 and figures["put_requests"] == 3
    assert figures["put_requests_saved"] == 27 and figures["cost_saved_usd"] == pytest.approx(27 * 0.005 / 1000)
    assert figures["objects_waiting"] == 1 and figures["bytes_staged"] == 7
    assert figures["batches_in_flight"] == 0 and figures["dead_letters"] == 0
    assert main(["stats"]) == 0
    assert "objects waiting" in capsys.readouterr().out


@pytest.mark.parametrize("direct", [False, True])
def test_put_bulk_loads_files_and_reports_failures(stack: Stack, tmp_path: Path, direct: bool) -> None:
    root = tmp_path / "site"
    files = {"index.html": b"<h1>hi</h1>", "img/logo.png": b"\x89PNG" * 50, "img/deep/a b.txt": b"spaces"}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "too-big.bin").write_bytes(b"z" * 5000)
    env = stack.env(S3BATCH_MAX_OBJECT_BYTES=4096, S3BATCH_MAX_BATCH_AGE=1)
    stack.start_worker(S3BATCH_MAX_OBJECT_BYTES=4096, S3BATCH_MAX_BATCH_AGE=1)
    refs_out = tmp_path / "refs.jsonl"
    args = ["put", str(root), "--refs-out", str(refs_out), "--no-progress", *(["--direct"] if direct else [])]
    done = run_cli(*args, env=env)
    assert done.returncode == 1, done.stderr
    assert "too-big.bin" in done.stderr and "S3BATCH_MAX_OBJECT_BYTES allows at most 4096" in done.stderr
    refs = [json.loads(line) for line in refs_out.read_text().splitlines()]
    assert {ref["object_key"] for ref in refs} == set(files)
    for ref in refs:
        tar = stack.tar_bytes(ref["key"])
        assert tar[ref["offset"] : ref["offset"] + ref["size"]] == files[ref["object_key"]]
        assert Path(ref["path"]).read_bytes() == files[ref["object_key"]]


def run_on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``args`` with stdout and stderr on a pseudo-terminal; its exit status and everything it wrote."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a 160-column terminal
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    return process.wait(60), output.decode(errors="replace")


def test_put_draws_bars_with_totals_on_a_terminal_only(stack: Stack, tmp_path: Path) -> None:
    root = tmp_path / "files"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.bin").write_bytes(bytes(1000))
    stack.start_worker()
    args = [sys.executable, "-m", "batcher.cli", "put", str(root)]
    piped = subprocess.run(args, env=stack.env(), capture_output=True, text=True, timeout=60, check=False)
    assert piped.returncode == 0, piped.stderr
    assert "staging" not in piped.stderr and "uploaded:" not in piped.stderr  # no bar on a pipe
    status, shown = run_on_a_terminal(args, stack.env())
    assert status == 0, shown
    assert "3/3 objects" in shown and "3.00k/3.00k" in shown  # objects and bytes against their totals
    assert "uploaded: 100%" in shown and "3/3" in shown
