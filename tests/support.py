"""Helpers for tests: worker subprocesses and reading batches back from S3."""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batcher.config import Settings, to_env
from batcher.index import is_reserved
from batcher.lanes import Lanes
from batcher.staging import Staging
from workers.process import WorkerProcess

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def settings_env(settings: Settings) -> dict[str, str]:
    """The S3BATCH_* variables that make a worker use ``settings``."""
    return to_env(settings)


@dataclass
class Stack:
    """One test's staging database, bucket and worker processes; ``staging`` is the default partition's first
    lane (registered), where a test stages directly."""

    settings: Settings
    lanes: Lanes
    staging: Staging
    s3: S3Client
    tmp_path: Path
    s3_env: dict[str, str] = field(default_factory=dict)  # AWS_* of the S3 server the test runs on
    workers: list[WorkerProcess] = field(default_factory=list)

    def env(self, **overrides: Any) -> dict[str, str]:
        """The environment of a worker on this stack; with S3BATCH_CRASH_AT, one that installs the crash hook."""
        env = dict(os.environ)
        env.update(self.s3_env)
        env.update(settings_env(self.settings))
        env.update({k: str(v) for k, v in overrides.items()})
        if "S3BATCH_CRASH_AT" in overrides:
            env.setdefault("S3BATCH_CELERY_CONFIG", "tests.crash_config")
        return env

    def start_worker(
        self,
        *,
        beat: bool = True,
        concurrency: int = 2,
        queues: str | None = None,
        extra_args: list[str] | None = None,
        **overrides: Any,
    ) -> WorkerProcess:
        """A worker on this stack's database and bucket; keyword overrides become environment variables."""
        name = f"w{len(self.workers)}"
        worker = WorkerProcess(
            self.env(**overrides), name, self.tmp_path, beat=beat, concurrency=concurrency, queues=queues,
            extra_args=extra_args,
        )  # fmt: skip
        self.workers.append(worker)
        worker.wait_ready()
        return worker

    def lanes_for(self, settings: Settings) -> Lanes:
        """This stack's lanes under the limits of ``settings``."""
        lanes = Lanes(self.lanes.client, settings)
        lanes.default_lane()
        return lanes

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()

    def batch_keys(self) -> list[str]:
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.settings.require_bucket()):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return sorted(keys)

    def tar_bytes(self, key: str) -> bytes:
        return bytes(self.s3.get_object(Bucket=self.settings.require_bucket(), Key=key)["Body"].read())

    def members(self, key: str) -> list[tarfile.TarInfo]:
        """The batch's object members, in order (its own index and trailer members left out)."""
        with tarfile.open(fileobj=io.BytesIO(self.tar_bytes(key))) as tar:
            return [member for member in tar.getmembers() if not is_reserved(member.name)]
