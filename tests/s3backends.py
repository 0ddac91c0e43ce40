"""The S3 servers a test can run against: moto (every test) and SeaweedFS (the tests marked ``s3_servers``).

moto answers like AWS for most of what s3batch needs but verifies no checksum and keeps everything in one
Python process; SeaweedFS is a real, distributed S3 server with its own quirks (see
tests/services/README.md). A module or test marked ``pytest.mark.s3_servers`` runs once per server, with ids
``[moto]`` and ``[seaweedfs]``; ``pytest.mark.s3_servers("moto", reason=...)`` on one test keeps it on moto
alone and must say why (a test that needs moto-only behaviour is never skipped silently). The ``s3_backend``
fixture (conftest) gives the chosen server as an ``S3Backend``: its endpoint for a fault proxy, a client for
the test process, and the AWS_* variables for a worker. SeaweedFS is started once per session on first use
(3-5 s) and closed by ``close_servers()`` in pytest_unconfigure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config

from tests.services.seaweed import REGION, SeaweedFS

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from batcher.embedded import S3Server

MOTO = "moto"
SEAWEEDFS = "seaweedfs"
SERVERS = (MOTO, SEAWEEDFS)
MARKER = "s3_servers"

_seaweedfs: list[SeaweedFS] = []  # at most one, shared by the session (each test has its own bucket)


@dataclass(frozen=True)
class S3Backend:
    """One S3 server as the tests use it; ``env`` holds the AWS_* variables a worker needs to reach it."""

    name: str
    endpoint_url: str
    access_key: str
    secret_key: str
    env: dict[str, str] = field(default_factory=dict)

    def client(self) -> S3Client:
        """A client for the test process (path-style, as both servers expect on a loopback address)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}),
        )


def _backend(name: str, endpoint_url: str, access_key: str, secret_key: str) -> S3Backend:
    # Only AWS_ENDPOINT_URL, never AWS_ENDPOINT_URL_S3 (which would win over it): a fault-proxy test overrides
    # AWS_ENDPOINT_URL for its workers, and that must keep working on either server.
    env = {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": REGION,
    }
    return S3Backend(name, endpoint_url, access_key, secret_key, env)


def backend_for(name: str, moto: S3Server) -> S3Backend:
    """The server called ``name``; SeaweedFS is started on first use. Raises ValueError for an unknown name."""
    if name == MOTO:
        return _backend(MOTO, moto.endpoint_url, "testing", "testing")  # the credentials conftest exports
    if name == SEAWEEDFS:
        if not _seaweedfs:
            _seaweedfs.append(SeaweedFS())
        server = _seaweedfs[0]
        return _backend(SEAWEEDFS, server.endpoint_url, server.access_key, server.secret_key)
    raise ValueError(f"unknown S3 server {name!r}: one of {', '.join(SERVERS)}")


def parametrize(metafunc: pytest.Metafunc) -> None:
    """pytest_generate_tests: one run per server the closest ``s3_servers`` marker names (all when it names
    none), for tests that use ``s3_backend`` (``s3`` and ``stack`` do)."""
    marker = metafunc.definition.get_closest_marker(MARKER)
    if marker is None or "s3_backend" not in metafunc.fixturenames:
        return
    names = marker.args or SERVERS
    unknown = set(names) - set(SERVERS)
    if unknown:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: unknown S3 server(s) {sorted(unknown)}")
    if set(names) != set(SERVERS) and not marker.kwargs.get("reason"):
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: s3_servers{names} needs reason=... (why not all)")
    metafunc.parametrize("s3_backend", names, indirect=True, ids=list(names))


def close_servers() -> None:
    """Kill the session's SeaweedFS, if one was started."""
    while _seaweedfs:
        _seaweedfs.pop().close()
