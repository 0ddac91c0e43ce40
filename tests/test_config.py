"""Settings: DESIGN.md's defaults, every S3BATCH_* variable, and clear errors for bad values."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from batcher.config import DEFAULT_REDIS_URL, Settings, load_config_module
from batcher.errors import ConfigError, S3BatchError

ALL_VARIABLES = {
    "S3BATCH_BUCKET": "my-bucket",
    "S3BATCH_PREFIX": "custom/prefix/",
    "S3BATCH_REDIS_URL": "redis://example:6380/3",
    "S3BATCH_MAX_BATCH_AGE": "2.5",
    "S3BATCH_MAX_BATCH_BYTES": "1000000",
    "S3BATCH_MAX_BATCH_OBJECTS": "50",
    "S3BATCH_MAX_OBJECT_BYTES": "4096",
    "S3BATCH_MAX_STAGED_BYTES": "2000000",
    "S3BATCH_LEASE_SECONDS": "3",
    "S3BATCH_UPLOAD_RETRY_SECONDS": "45",
    "S3BATCH_RESULT_EXPIRES": "3600",
    "S3BATCH_NO_WORKER_TIMEOUT": "15",
    "S3BATCH_BUCKETS": "tenant-*,my-bucket",
    "S3BATCH_LANES": "8",
    "S3BATCH_REDIS_SENTINEL_MASTER": "mymaster",
    "S3BATCH_STAGING_REPLICAS": "1",
    "S3BATCH_UPLOAD_ARGS": '{"StorageClass": "STANDARD_IA", "ServerSideEncryption": "aws:kms"}',
    "S3BATCH_PARTITION_UPLOAD_ARGS": '{"tenant-a/logs/": {"SSEKMSKeyId": "alias/tenant-a"}}',
    "S3BATCH_UPLOAD_CHECKSUM": "crc32c",
    "S3BATCH_VERIFY_UPLOADS": "always",
}

NUMERIC_VARIABLES = [
    "S3BATCH_MAX_BATCH_AGE",
    "S3BATCH_MAX_BATCH_BYTES",
    "S3BATCH_MAX_BATCH_OBJECTS",
    "S3BATCH_MAX_OBJECT_BYTES",
    "S3BATCH_MAX_STAGED_BYTES",
    "S3BATCH_LEASE_SECONDS",
    "S3BATCH_UPLOAD_RETRY_SECONDS",
    "S3BATCH_RESULT_EXPIRES",
    "S3BATCH_NO_WORKER_TIMEOUT",
    "S3BATCH_LANES",
]


def test_defaults_match_design_table() -> None:
    settings = Settings()
    assert settings.bucket is None
    assert settings.prefix == "batches/"
    assert settings.redis_url == "redis://localhost:6379/0" == DEFAULT_REDIS_URL
    assert settings.max_batch_age_s == 10
    assert settings.max_batch_bytes == 67108864
    assert settings.max_batch_objects == 10000
    assert settings.max_object_bytes == 5242880
    assert settings.max_staged_bytes == 1073741824
    assert settings.lease_s == 30 and settings.upload_retry_s == 600


def test_from_empty_env_gives_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_blank_values_fall_back_to_defaults() -> None:
    assert Settings.from_env({name: "  " for name in ALL_VARIABLES}) == Settings()


def test_from_env_reads_every_variable() -> None:
    settings = Settings.from_env(ALL_VARIABLES)
    assert settings == Settings(
        bucket="my-bucket",
        prefix="custom/prefix/",
        redis_url="redis://example:6380/3",
        max_batch_age_s=2.5,
        max_batch_bytes=1_000_000,
        max_batch_objects=50,
        max_object_bytes=4096,
        max_staged_bytes=2_000_000,
        lease_s=3.0,
        upload_retry_s=45.0,
        result_expires_s=3600.0,
        no_worker_timeout_s=15.0,
        buckets="tenant-*,my-bucket",
        lanes=8,
        redis_sentinel_master="mymaster",
        staging_replicas=1,
        upload_args='{"ServerSideEncryption":"aws:kms","StorageClass":"STANDARD_IA"}',
        partition_upload_args='{"tenant-a/logs/":{"SSEKMSKeyId":"alias/tenant-a"}}',
        upload_checksum="CRC32C",
        verify_uploads="always",
    )
    assert settings.upload_args_for("tenant-a", "logs/")["SSEKMSKeyId"] == "alias/tenant-a"
    assert "SSEKMSKeyId" not in settings.upload_args_for("tenant-a", "img/")
    # Every field is covered: none kept its default.
    for field in dataclasses.fields(Settings):
        assert getattr(settings, field.name) != field.default, field.name


def test_from_env_ignores_unrelated_variables() -> None:
    assert Settings.from_env({"BUCKET": "x", "S3BATCH_OTHER": "y", "AWS_DEFAULT_REGION": "eu-west-1"}) == Settings()


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3BATCH_BUCKET", "from-os-environ")
    monkeypatch.setenv("S3BATCH_MAX_BATCH_AGE", "3")
    settings = Settings.from_env()
    assert settings.bucket == "from-os-environ"
    assert settings.max_batch_age_s == 3.0


def test_sizes_accept_underscores_and_whitespace() -> None:
    settings = Settings.from_env({"S3BATCH_MAX_BATCH_BYTES": " 64_000_000 "})
    assert settings.max_batch_bytes == 64_000_000


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().prefix = "other/"  # type: ignore[misc]


@pytest.mark.parametrize("name", NUMERIC_VARIABLES)
@pytest.mark.parametrize("value", ["abc", "0", "-1"])
def test_bad_numeric_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    assert name in str(info.value)
    assert isinstance(info.value, S3BatchError)


@pytest.mark.parametrize(
    "name", [n for n in NUMERIC_VARIABLES if not n.endswith(("_AGE", "_SECONDS", "_EXPIRES", "_TIMEOUT"))]
)
def test_sizes_must_be_integers(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: "1.5"})


def test_batch_age_may_be_fractional() -> None:
    assert Settings.from_env({"S3BATCH_MAX_BATCH_AGE": "0.5"}).max_batch_age_s == 0.5


def test_object_larger_than_batch_is_refused() -> None:
    env = {"S3BATCH_MAX_BATCH_BYTES": "1000", "S3BATCH_MAX_OBJECT_BYTES": "1001"}
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert "S3BATCH_MAX_OBJECT_BYTES" in str(info.value)
    assert "S3BATCH_MAX_BATCH_BYTES" in str(info.value)


def test_object_as_large_as_batch_is_accepted() -> None:
    settings = Settings(max_batch_bytes=1000, max_object_bytes=1000, max_staged_bytes=1000)
    assert settings.max_object_bytes == settings.max_batch_bytes


def test_staging_smaller_than_a_batch_is_refused() -> None:
    with pytest.raises(ConfigError, match="S3BATCH_MAX_STAGED_BYTES"):
        Settings(max_batch_bytes=10_000_000, max_object_bytes=1000, max_staged_bytes=9_999_999)


def test_absolute_prefix_is_refused() -> None:
    with pytest.raises(ConfigError, match="S3BATCH_PREFIX"):
        Settings.from_env({"S3BATCH_PREFIX": "/batches/"})


def test_require_bucket_raises_when_unset() -> None:
    with pytest.raises(ConfigError, match="S3BATCH_BUCKET"):
        Settings().require_bucket()
    with pytest.raises(ConfigError, match="S3BATCH_BUCKET"):
        Settings(bucket="").require_bucket()


def test_require_bucket_returns_the_bucket() -> None:
    assert Settings.from_env({"S3BATCH_BUCKET": "b1"}).require_bucket() == "b1"


@pytest.mark.parametrize(
    ("age_s", "interval_s"),
    [(10.0, 1.0), (100.0, 1.0), (5.0, 0.5), (3.0, 0.3), (2.0, 0.2), (1.0, 0.2), (0.1, 0.2)],
)
def test_flush_interval_is_a_tenth_of_the_age_between_bounds(age_s: float, interval_s: float) -> None:
    assert Settings(max_batch_age_s=age_s).flush_interval_s == pytest.approx(interval_s)


def test_default_flush_interval_is_within_one_second() -> None:
    assert Settings().flush_interval_s == 1.0


# ---- the configuration module (S3BATCH_CELERY_CONFIG): the same loader, parsing and errors ----


@pytest.fixture
def config_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """Write a configuration module under a fresh name on sys.path; returns its name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names = iter(range(1000))

    def write(source: str) -> str:
        name = f"s3batch_test_config_{next(names)}_{tmp_path.name.replace('-', '_')}"
        (tmp_path / f"{name}.py").write_text(source)
        return name

    return write


def test_module_values_win_over_the_environment(config_module: Callable[[str], str]) -> None:
    name = config_module('s3batch_bucket = "from-module"\ns3batch_max_batch_age_s = 5\nbroker_pool_limit = 3\n')
    settings = Settings.from_env({"S3BATCH_CELERY_CONFIG": name, "S3BATCH_BUCKET": "from-env", "S3BATCH_PREFIX": "p/"})
    assert (settings.bucket, settings.max_batch_age_s, settings.prefix) == ("from-module", 5.0, "p/")


def test_module_strings_are_parsed_like_the_environment(config_module: Callable[[str], str]) -> None:
    name = config_module('s3batch_max_batch_age_s = "5"\ns3batch_max_batch_bytes = "64_000_000"\n')
    settings = Settings.from_env({"S3BATCH_CELERY_CONFIG": name})
    assert (settings.max_batch_age_s, settings.max_batch_bytes) == (5.0, 64_000_000)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            's3batch_max_batch_age_s = "abc"',
            r"s3batch_max_batch_age_s in S3BATCH_CELERY_CONFIG=.* is not a valid number",
        ),
        (
            "s3batch_max_batch_bytes = 1.5",
            r"s3batch_max_batch_bytes in S3BATCH_CELERY_CONFIG=.* is not a valid integer",
        ),
        ("s3batch_bucket = 7", r"s3batch_bucket in S3BATCH_CELERY_CONFIG=.* must be a string"),
        (
            "s3batch_max_bach_age_s = 3",
            r"s3batch_max_bach_age_s .* is not an s3batch setting \(did you mean s3batch_max_batch_age_s",
        ),
        ("s3batch_lease_s = 0", r"S3BATCH_LEASE_SECONDS=0.0 must be greater than zero"),
        ("raise RuntimeError('boom')", r"S3BATCH_CELERY_CONFIG=.* cannot be imported: RuntimeError\('boom'\)"),
    ],
)
def test_bad_module_values_are_named(config_module: Callable[[str], str], source: str, message: str) -> None:
    name = config_module(source + "\n")
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"S3BATCH_CELERY_CONFIG": name})


def test_a_missing_module_is_named() -> None:
    with pytest.raises(ConfigError, match=r"S3BATCH_CELERY_CONFIG='no\.such\.module' cannot be imported"):
        Settings.from_env({"S3BATCH_CELERY_CONFIG": "no.such.module"})


def test_transport_options_of_the_module_are_merged_not_replaced(config_module: Callable[[str], str]) -> None:
    from workers.app import UNACKED_KEYS, S3BatchApp

    name = config_module('broker_transport_options = {"max_connections": 20, "unacked_restore_interval": 7}\n')
    app = S3BatchApp(Settings(max_batch_age_s=4), load_config_module(name))
    options = app.conf.broker_transport_options
    assert options["max_connections"] == 20 and options["unacked_restore_interval"] == 7  # theirs win per key
    assert options["visibility_timeout"] == 12  # ours stay: three batch ages, at least 10 s
    assert {k: options[k] for k in UNACKED_KEYS} == UNACKED_KEYS


def test_the_app_is_configured_at_first_use_not_at_import() -> None:
    from workers.app import S3BatchApp

    app = S3BatchApp()
    assert app._s3batch_settings is None  # nothing read yet
    assert app.conf.result_expires == Settings.from_env().result_expires_s
    assert app.s3batch_settings == Settings.from_env()


def test_the_replaced_upload_attempts_variable_is_named_with_its_successor() -> None:
    with pytest.raises(ConfigError, match="S3BATCH_UPLOAD_ATTEMPTS was replaced by S3BATCH_UPLOAD_RETRY_SECONDS"):
        Settings.from_env({"S3BATCH_UPLOAD_ATTEMPTS": "5"})
