"""Local stand-ins for Redis and S3, for the demo, the tests and the benchmarks.

``RedisServer`` runs a real ``redis-server`` on a free loopback port in a
temporary directory; ``S3Server`` runs moto's S3-compatible HTTP server, in
this process or as a subprocess (which keeps its work off our GIL).
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from batcher.errors import ConfigError

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, what: str, process: subprocess.Popen[bytes] | None, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ConfigError(f"{what} exited with code {process.returncode} while starting")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise ConfigError(f"{what} did not listen on port {port} within {timeout_s} s")


class RedisServer:
    """A private redis-server process with append-only persistence in a temporary directory."""

    def __init__(self, *, appendonly: bool = True, databases: int = 16, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ConfigError(
                "redis-server is not installed: install it (Debian: apt-get install redis-server) or set "
                "S3BATCH_REDIS_URL to a running Redis"
            )
        self.binary = binary
        self.port = port or free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="s3batch-redis-"))
        self.appendonly = appendonly
        self.databases = databases
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Start (or restart) the server on the same port and directory."""
        command = [
            self.binary, "--port", str(self.port), "--bind", LOOPBACK, "--dir", str(self.directory),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
            "--databases", str(self.databases), "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, "redis-server", self.process)
        self._wait_loaded()

    def _wait_loaded(self, timeout_s: float = 60) -> None:
        """Until the server answers commands: after a restart it first loads its append-only file."""
        client = redis.Redis(host=LOOPBACK, port=self.port)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.BusyLoadingError:
                    if time.monotonic() > deadline:
                        raise ConfigError(
                            f"redis-server on port {self.port} still loads its data after {timeout_s} s"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Shut down cleanly (SIGTERM makes Redis flush its append-only file)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
        self.process = None

    def url(self, db: int = 0) -> str:
        return f"redis://{LOOPBACK}:{self.port}/{db}"

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class S3Server:
    """moto's S3-compatible server on a free loopback port."""

    def __init__(self, *, in_process: bool = True, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint_url = f"http://{LOOPBACK}:{self.port}"
        self._threaded: Any = None
        self.process: subprocess.Popen[bytes] | None = None
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:
            raise ConfigError(
                "the embedded S3 server needs moto: pip install 's3batch[demo]', or point "
                "AWS_ENDPOINT_URL_S3 at an S3-compatible server"
            ) from None
        if in_process:
            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
            self._threaded = ThreadedMotoServer(ip_address=LOOPBACK, port=self.port, verbose=False)
            self._threaded.start()
        else:
            command = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)]
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.port, "moto S3 server", self.process)

    def close(self) -> None:
        if self._threaded is not None:
            self._threaded.stop()
            self._threaded = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
