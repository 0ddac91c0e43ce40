"""Run ``celery -A workers.app worker`` as a child process (demo, tests, benchmarks)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """A worker (optionally with embedded beat) in its own process group, logging to a file."""

    def __init__(
        self,
        env: dict[str, str],
        name: str,
        logdir: Path,
        *,
        beat: bool,
        concurrency: int = 2,
        loglevel: str = "INFO",
        queues: str | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.name = name
        self.node = f"{name}@{os.uname().nodename}"  # as `-n {name}@%h` names it, for app.control.ping
        self.logfile = logdir / f"{name}.log"
        command = [
            sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-n", f"{name}@%h",
            "-c", str(concurrency), f"--loglevel={loglevel}", "--logfile", str(self.logfile),
            "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        if beat:
            command += ["-B", "-s", str(logdir / f"{name}-beat-schedule")]
        if queues:
            command += ["-Q", queues]
        command += extra_args or []
        self.process = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Block until the worker logs that it is ready; raises RuntimeError with its log if it dies."""
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
        """Signal the whole process group: the main process, its pool children and beat."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self, timeout_s: float = 30) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL for whatever is left of the group."""
        if self.process.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.kill(signal.SIGKILL)  # pool children may outlive a dead main process
