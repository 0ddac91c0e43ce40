"""Checks that a deployment can work, run when a worker starts and when a Batcher is built.

Each failure is one ConfigError that says what is wrong, with which setting, and what to do, so that a bad
deployment stops at once instead of reporting ready and failing at every flush.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import redis
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from redis.cluster import RedisCluster

from batcher.config import Settings
from batcher.errors import ConfigError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def check_redis(client: Any, url: str, setting: str, loading_wait_s: float = 60) -> dict[str, Any]:
    """Ping the Redis that ``setting`` names; returns its INFO ``server`` and ``cluster`` sections.

    A Redis that is still loading its data after a restart is waited for, up to ``loading_wait_s``.
    Raises ConfigError when it cannot be reached or refuses the credentials.
    """
    where = f"{setting}={redact(url)}"
    deadline = time.monotonic() + loading_wait_s
    try:
        while True:
            try:
                client.ping()
                break
            except redis.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise ConfigError(f"Redis at {where} still loads its data after {loading_wait_s:g} s") from None
                time.sleep(0.1)
        info: dict[str, Any] = client.info("server")
        info.update(client.info("cluster"))
    except redis.AuthenticationError as exc:
        raise ConfigError(
            f"Redis refused the credentials of {where}: {exc}; put the right password in the URL"
        ) from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise ConfigError(f"Redis wants a password that {where} does not give ({exc})") from None
        raise ConfigError(f"Redis at {where} refused a PING: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise ConfigError(f"cannot connect to Redis at {where}: {exc}; is it running and reachable?") from None
    return info


def check_staging(client: Any, settings: Settings) -> None:
    """ConfigError when the staging Redis (any topology) cannot be used as ``settings`` ask."""
    url, setting = settings.redis_url, "S3BATCH_REDIS_URL"
    if isinstance(client, RedisCluster):
        try:
            client.ping()
        except redis.RedisError as exc:
            raise ConfigError(f"the Redis Cluster of {setting}={redact(url)} does not answer: {exc}") from None
        if settings.staging_replicas:
            raise ConfigError(
                "S3BATCH_STAGING_REPLICAS needs one connection to a master to WAIT on, which a Redis Cluster "
                "client does not give: use it with a single Redis or a Sentinel group, or set it to 0"
            )
        return
    check_redis(client, url, setting)
    if settings.staging_replicas:
        replicas = int(client.info("replication").get("connected_slaves", 0))
        if replicas < settings.staging_replicas:
            raise ConfigError(
                f"S3BATCH_STAGING_REPLICAS={settings.staging_replicas}, but the staging Redis has {replicas} "
                "connected replicas: every object would be refused until enough replicas are back"
            )


def refuse_cluster(info: dict[str, Any], url: str, setting: str, why: str) -> None:
    """ConfigError when the Redis whose INFO this is runs in cluster mode and ``setting`` cannot use one."""
    if info.get("cluster_enabled"):
        raise ConfigError(f"{setting}={redact(url)} is a Redis Cluster node: {why}")


def check_bucket(s3: S3Client, bucket: str, probe_key: str) -> None:
    """ConfigError unless ``bucket`` exists and these credentials are accepted: one GET of ``probe_key``, a key
    that need not exist (a HEAD of the bucket would need s3:ListBucket, which workers do not need otherwise).

    NoSuchKey and AccessDenied (S3's answer for a missing key without s3:ListBucket) are fine; a missing bucket,
    unknown credentials or an unreachable endpoint are not.
    """
    endpoint = s3.meta.endpoint_url
    try:
        s3.get_object(Bucket=bucket, Key=probe_key, Range="bytes=0-0")
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "AccessDenied", "InvalidRange"):
            return
        if code == "NoSuchBucket":
            raise ConfigError(
                f"bucket {bucket!r} (S3BATCH_BUCKET) does not exist at {endpoint}: create it, or fix S3BATCH_BUCKET"
            ) from None
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
            raise ConfigError(
                f"S3 at {endpoint} does not accept these credentials ({code}): check AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY or the profile"
            ) from None
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        raise ConfigError(f"S3 at {endpoint} refused a read in bucket {bucket!r}: {code or status}") from None
    except NoCredentialsError:
        raise ConfigError(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an instance role"
        ) from None
    except BotoCoreError as exc:
        raise ConfigError(
            f"cannot reach S3 at {endpoint} for bucket {bucket!r}: {exc}; check AWS_ENDPOINT_URL_S3 / the network"
        ) from None
