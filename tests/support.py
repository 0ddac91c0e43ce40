"""Helpers for tests: worker subprocesses and reading batches back from S3."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batcher.config import Settings
from batcher.staging import Staging

ROOT = Path(__file__).resolve().parent.parent


def settings_env(settings: Settings) -> dict[str, str]:
    """The S3BATCH_* variables that make a worker use ``settings``."""
    return {
        "S3BATCH_BUCKET": settings.bucket or "",
        "S3BATCH_PREFIX": settings.prefix,
        "S3BATCH_REDIS_URL": settings.redis_url,
        "S3BATCH_MAX_BATCH_AGE": str(settings.max_batch_age_s),
        "S3BATCH_MAX_BATCH_BYTES": str(settings.max_batch_bytes),
        "S3BATCH_MAX_BATCH_OBJECTS": str(settings.max_batch_objects),
        "S3BATCH_MAX_OBJECT_BYTES": str(settings.max_object_bytes),
        "S3BATCH_MAX_STAGED_BYTES": str(settings.max_staged_bytes),
    }


class Worker:
    """``celery -A workers.app worker`` as a subprocess in its own process group."""

    def __init__(self, env: dict[str, str], name: str, logdir: Path, *, beat: bool, concurrency: int = 2) -> None:
        self.name = name
        self.logfile = logdir / f"{name}.log"
        command = [
            sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-n", f"{name}@%h",
            "-c", str(concurrency), "--loglevel=INFO", "--logfile", str(self.logfile), "--without-gossip",
            "--without-mingle",
        ]  # fmt: skip
        if beat:
            command += ["-B", "-s", str(logdir / f"{name}-beat-schedule")]
        self.process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited ({self.process.returncode}):\n{self.log()}")
            if " ready." in self.log():
                return
            time.sleep(0.05)
        raise TimeoutError(f"worker {self.name} not ready after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (the main process and its pool children)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    def stop(self, timeout_s: float = 30) -> None:
        if self.process.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.process.wait()
        else:
            self.kill(signal.SIGKILL)  # pool children may outlive a dead main process


@dataclass
class Stack:
    """One test's staging database, bucket and worker processes."""

    settings: Settings
    staging: Staging
    s3: Any
    tmp_path: Path
    workers: list[Worker] = field(default_factory=list)

    def env(self, **overrides: Any) -> dict[str, str]:
        env = dict(os.environ)
        env.update(settings_env(self.settings))
        env.update({k: str(v) for k, v in overrides.items()})
        return env

    def start_worker(self, *, beat: bool = True, concurrency: int = 2, **overrides: Any) -> Worker:
        worker = Worker(
            self.env(**overrides), f"w{len(self.workers)}", self.tmp_path, beat=beat, concurrency=concurrency
        )
        self.workers.append(worker)
        worker.wait_ready()
        return worker

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()

    def batch_keys(self) -> list[str]:
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.settings.bucket):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return sorted(keys)

    def tar_bytes(self, key: str) -> bytes:
        return bytes(self.s3.get_object(Bucket=self.settings.bucket, Key=key)["Body"].read())

    def members(self, key: str) -> list[tarfile.TarInfo]:
        with tarfile.open(fileobj=io.BytesIO(self.tar_bytes(key))) as tar:
            return tar.getmembers()
