"""S3 helpers for the benchmarks: clients, listings and cleanup (so that every run counts exactly its own tars)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import boto3


def s3_client(endpoint_url: str, credentials: dict[str, str] | None = None) -> Any:
    """A boto3 S3 client; a session per client, since creating clients from the default one is not thread-safe.

    ``credentials`` (``aws_access_key_id``, ``aws_secret_access_key``) replace the environment's, for a server
    other than the one the environment names (SeaweedFS next to moto).
    """
    given = credentials or {}
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=given.get("aws_access_key_id"),
        aws_secret_access_key=given.get("aws_secret_access_key"),
    )


def listing(client: Any, bucket: str, prefix: str = "") -> dict[str, int]:
    """Key -> size of every object under ``prefix``."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}


def delete_keys(client: Any, bucket: str, keys: Sequence[str]) -> None:
    """Delete ``keys`` (1,000 per request), so that moto's memory and listings stay small across runs."""
    keys = list(keys)
    for start in range(0, len(keys), 1000):
        chunk = [{"Key": key} for key in keys[start : start + 1000]]
        client.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
