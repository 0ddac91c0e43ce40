"""A smoke run of the benchmark suite, so that it keeps working: its figures are reported, never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.services  # the suite starts its own redis-server, moto, SeaweedFS and workers

ROOT = Path(__file__).resolve().parent.parent


def test_quick_suite_runs_and_writes_its_figures(tmp_path: Path) -> None:
    out, png = tmp_path / "suite.json", tmp_path / "suite.png"
    # seaweedfs: scenarios 1, 3 and 4 again on SeaweedFS (about 30 s more: its start and two worker restarts);
    # rabbitmq: scenario 3 again on a RabbitMQ vhost (about 10 s more)
    scenarios = "naive,delay,batcher,seaweedfs,rabbitmq"
    args = ["--quick", "--scenarios", scenarios, "--verify", "10", "--json", str(out), "--png", str(png)]
    done = subprocess.run(
        [sys.executable, "-m", "bench.suite", *args], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True,
        timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = {f["key"]: f for f in json.loads(out.read_text())["figures"]}
    for key in ("naive16.objects_per_s", "delay.objects_per_s", "batcher.objects_per_s", "batcher.put_calls"):
        assert figures[key]["median"] > 0, key
        assert figures[f"seaweedfs.{key}"]["median"] > 0, key
    assert figures["rabbitmq.delay.objects_per_s"]["median"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
