"""Per-process clients of an s3batch app (staging, results, the flusher), created on first use after a fork."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from batcher.config import Settings
from batcher.flush import Flusher
from batcher.lanes import Lanes
from batcher.uploader import Uploader
from workers.app import S3BatchApp
from workers.results import ResultWriter


@dataclass
class Runtime:
    """Per-process clients of one app, created on first use (after the worker forks)."""

    app: S3BatchApp

    @property
    def settings(self) -> Settings:
        return self.app.s3batch_settings

    @cached_property
    def lanes(self) -> Lanes:
        return Lanes.for_settings(self.settings)

    @cached_property
    def results(self) -> ResultWriter:
        return ResultWriter(self.app)

    @cached_property
    def flusher(self) -> Flusher:
        return Flusher(self.settings, self.lanes, Uploader(verify=self.settings.verify_uploads), self.results)


_runtimes: dict[int, Runtime] = {}


def runtime(app: Celery) -> Runtime:
    """The clients of ``app`` in this process."""
    found = _runtimes.get(id(app))
    if found is None:
        if not isinstance(app, S3BatchApp):
            raise TypeError(f"s3batch tasks run on an S3BatchApp (workers.app.create_app), not {app!r}")
        found = _runtimes[id(app)] = Runtime(app)
    return found


@worker_process_init.connect
def _fresh_clients_after_fork(**_: Any) -> None:
    _runtimes.clear()
