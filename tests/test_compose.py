"""docker-compose.yml, .env.example and Dockerfile: the production-shaped deployment.

There is no Docker engine on the test machines, so no container runs here. What runs instead:
``docker-compose config`` (validation, interpolation, anchors) with a sample .env; each property check of
tests/composefile.py on the shipped file and on a copy mutated to lose the property (a check that cannot fail
is caught); and, for real, the redis service's command on a local redis-server that the clients' URLs (built by
their entrypoint) then log in to with redis-py, kombu and Celery's result backend, and the minio-init script
against a stand-in ``mc`` that records its calls.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from celery import Celery
from kombu import Connection

from batcher.config import VARIABLES
from tests import composefile as cf
from tests.composefile import Deployment

SERVICES = ("redis", "minio", "minio-init", "worker", "beat", "flower", "metrics")
# The only AWS_* names the deployment may use: boto3 reads these itself (DESIGN.md: never invent one).
BOTO3_VARIABLES = {
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
}


@pytest.fixture(scope="module")
def deployment() -> Deployment:
    return cf.resolve(cf.COMPOSE_FILE, cf.sample_env())


@pytest.fixture(scope="module")
def services(deployment: Deployment) -> dict[str, dict[str, Any]]:
    return deployment.services


# --- the file as a whole ---------------------------------------------------------------------------------------


def test_compose_file_is_valid_for_docker_compose() -> None:
    result = cf.run_config(cf.COMPOSE_FILE, cf.sample_env(), "-q")
    assert result.returncode == 0, f"docker-compose config rejected docker-compose.yml:\n{result.stderr}"
    assert "WARN" not in result.stderr.upper(), result.stderr


def test_env_example_lists_every_variable_and_ships_no_secret() -> None:
    example = cf.example_env()
    interpolated = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", cf.COMPOSE_FILE.read_text(encoding="utf-8")))
    assert interpolated <= set(example), f".env.example lacks {sorted(interpolated - set(example))}"
    assert set(cf.SECRETS) <= interpolated, f"secrets the file never reads: {sorted(set(cf.SECRETS) - interpolated)}"
    filled = [name for name in cf.SECRETS if example[name]]
    assert not filled, f".env.example must leave the secrets empty (a copied default is a known password): {filled}"


def test_every_service_a_user_relies_on_exists(services: dict[str, dict[str, Any]]) -> None:
    missing = [name for name in SERVICES if name not in services]
    assert not missing, f"docker-compose.yml lacks the services {missing}"


# --- one test per property; each check is also proven to fail on a mutated file below ------------------------


@pytest.mark.parametrize("name", cf.SECRETS)
def test_secret_is_required(deployment: Deployment, name: str) -> None:
    cf.check_required_secret(deployment, name)


def test_redis_has_a_password_maxmemory_noeviction_and_append_only(deployment: Deployment) -> None:
    cf.check_redis_server(deployment)


def test_every_redis_client_url_carries_the_password_percent_encoded(deployment: Deployment) -> None:
    cf.check_redis_clients(deployment)


def test_workers_use_their_own_minio_user_not_root(deployment: Deployment) -> None:
    cf.check_worker_identity(deployment)


def test_worker_policy_has_exactly_the_minimal_actions_on_the_prefix(deployment: Deployment) -> None:
    cf.check_worker_policy(deployment)


def test_init_job_creates_bucket_policy_and_user_and_attaches_them(deployment: Deployment, tmp_path: Path) -> None:
    cf.check_init_job(deployment, tmp_path)


def test_flower_asks_for_basic_auth_on_loopback(deployment: Deployment) -> None:
    cf.check_flower_auth(deployment)


def test_published_ports_listen_on_loopback_only(deployment: Deployment) -> None:
    cf.check_loopback_ports(deployment)


def test_images_are_pinned_by_exact_tag_and_digest(deployment: Deployment) -> None:
    cf.check_pinned_images(deployment)
    cf.check_dockerfile_pinned(cf.DOCKERFILE.read_text(encoding="utf-8"))


Mutation = tuple[str, str, Callable[[Deployment, Path], None], str]
# (text in docker-compose.yml, its replacement, the check that must then fail, what its message says)
MUTATIONS: dict[str, Mutation] = {
    "redis password optional": (
        "${REDIS_PASSWORD:?",
        "${REDIS_PASSWORD:-",
        lambda d, _: cf.check_required_secret(d, "REDIS_PASSWORD"),
        "accepts REDIS_PASSWORD unset",
    ),
    "flower password optional": (
        "${FLOWER_PASSWORD:?",
        "${FLOWER_PASSWORD-",
        lambda d, _: cf.check_required_secret(d, "FLOWER_PASSWORD"),
        "accepts FLOWER_PASSWORD unset",
    ),
    "no requirepass": (
        "      - --requirepass\n      - *redis-password\n",
        "",
        lambda d, _: cf.check_redis_server(d),
        "ask for a password",
    ),
    "no maxmemory": (
        "      - --maxmemory\n      - ${REDIS_MAXMEMORY:-2gb}\n",
        "",
        lambda d, _: cf.check_redis_server(d),
        "needs --maxmemory",
    ),
    "evicting": (
        "      - noeviction\n",
        "      - allkeys-lru\n",
        lambda d, _: cf.check_redis_server(d),
        "evicting would drop",
    ),
    "maxmemory below staging": (
        "${REDIS_MAXMEMORY:-2gb}",
        "1gb",
        lambda d, _: cf.check_redis_server(d),
        "too little room",
    ),
    "no append-only": (
        '      - --appendonly\n      - "yes"\n',
        '      - --appendonly\n      - "no"\n',
        lambda d, _: cf.check_redis_server(d),
        "--appendonly yes",
    ),
    "healthcheck fooled by NOAUTH": (
        '["CMD-SHELL", "redis-cli ping | grep -q PONG"]',
        '["CMD", "redis-cli", "ping"]',
        lambda d, _: cf.check_redis_server(d),
        "must see PONG",
    ),
    "beat without the password": (
        "    <<: *redis-client\n    # There must be only one beat",
        "    # There must be only one beat",
        lambda d, _: cf.check_redis_clients(d),
        "beat does not use redis",
    ),
    "password not encoded": (
        'password = urllib.parse.quote(os.environ.pop("REDIS_PASSWORD"), safe="")',
        'password = os.environ.pop("REDIS_PASSWORD")',
        lambda d, _: cf.check_redis_clients(d),
        "not percent-encoded",
    ),
    "workers as root": (
        "      AWS_ACCESS_KEY_ID: *worker-access-key\n      AWS_SECRET_ACCESS_KEY: *worker-secret-key\n",
        "      AWS_ACCESS_KEY_ID: *minio-root-user\n      AWS_SECRET_ACCESS_KEY: *minio-root-password\n",
        lambda d, _: cf.check_worker_identity(d),
        "root user",
    ),
    "beat with s3 keys": (
        "    environment: *s3batch-env\n",
        "    environment:\n      <<: *s3batch-env\n      AWS_ACCESS_KEY_ID: *worker-access-key\n",
        lambda d, _: cf.check_worker_identity(d),
        "beat never touches S3",
    ),
    "policy with list": (
        '"s3:AbortMultipartUpload"]',
        '"s3:AbortMultipartUpload", "s3:ListBucket"]',
        lambda d, _: cf.check_worker_policy(d),
        "actions",
    ),
    "policy on the whole bucket": (
        "${S3BATCH_PREFIX:-batches/}*",
        "*",
        lambda d, _: cf.check_worker_policy(d),
        "resources",
    ),
    "policy without abort": (', "s3:AbortMultipartUpload"]', "]", lambda d, _: cf.check_worker_policy(d), "actions"),
    "user never attached": (
        '        mc admin policy attach root s3batch-worker --user "$$MINIO_WORKER_ACCESS_KEY" ||\n'
        '          mc admin user info root "$$MINIO_WORKER_ACCESS_KEY" | grep -q s3batch-worker\n',
        "",
        cf.check_init_job,
        "never attaches the policy",
    ),
    "no worker user": (
        '        mc admin user add root "$$MINIO_WORKER_ACCESS_KEY" "$$MINIO_WORKER_SECRET_KEY"\n',
        "",
        cf.check_init_job,
        "never creates the worker user",
    ),
    "flower open": (
        "      FLOWER_BASIC_AUTH:",
        "      FLOWER_NO_AUTH:",
        lambda d, _: cf.check_flower_auth(d),
        "basic auth is ''",
    ),
    "flower on every interface": ('"127.0.0.1:5555:5555"', '"5555:5555"', lambda d, _: cf.check_flower_auth(d), "5555"),
    "redis on every interface": (
        '"127.0.0.1:6379:6379"',
        '"6379:6379"',
        lambda d, _: cf.check_loopback_ports(d),
        "redis publishes 6379 on every interface",
    ),
    "latest image": (
        "minio/mc:RELEASE.2025-08-13T08-35-41Z@",
        "minio/mc:latest@",
        lambda d, _: cf.check_pinned_images(d),
        "is latest",
    ),
    "no digest": (
        "redis:7.4.5-bookworm@sha256:",
        "redis:7.4.5-bookworm#sha256:",
        lambda d, _: cf.check_pinned_images(d),
        "no @sha256 digest",
    ),
    "major tag only": (
        "redis:7.4.5-bookworm@",
        "redis:7@",
        lambda d, _: cf.check_pinned_images(d),
        "not an exact version",
    ),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_each_check_fails_when_its_property_is_removed(mutation: str, tmp_path: Path) -> None:
    old, new, check, message = MUTATIONS[mutation]
    text = cf.COMPOSE_FILE.read_text(encoding="utf-8")
    assert old in text, f"the mutation {mutation!r} no longer applies: docker-compose.yml changed; update it"
    mutated = tmp_path / "docker-compose.yml"
    mutated.write_text(text.replace(old, new), encoding="utf-8")
    deployment = cf.resolve(mutated, cf.sample_env())
    with pytest.raises(AssertionError, match=re.escape(message)):
        check(deployment, tmp_path)


def test_dockerfile_check_fails_when_unpinned() -> None:
    text = cf.DOCKERFILE.read_text(encoding="utf-8")
    for old, new in ((re.search(r"FROM (\S+)", text).group(1), "python:3.11-slim"), ("flower==2.0.1", "flower>=2")):  # type: ignore[union-attr]
        assert old in text, old
        with pytest.raises(AssertionError):
            cf.check_dockerfile_pinned(text.replace(old, new))


def test_init_script_accepts_an_mc_that_refuses_a_repeated_attach_only_when_attached(
    deployment: Deployment, tmp_path: Path
) -> None:
    calls = cf.run_init_script(deployment, tmp_path, attach_fails=True)
    assert calls[-1][:3] == ["admin", "user", "info"], calls
    with pytest.MonkeyPatch.context() as patch:  # the user shows another policy: the fallback must fail
        patch.setattr(cf, "WORKER_POLICY_NAME", "some-other-policy")
        with pytest.raises(AssertionError, match="script failed"):
            cf.run_init_script(deployment, tmp_path, attach_fails=True)


# --- what runs for real without Docker ------------------------------------------------------------------------


@pytest.fixture
def redis_service(deployment: Deployment, tmp_path: Path) -> Iterator[int]:
    """The redis service's resolved command on a local redis-server (port, bind and dir changed); its port."""
    args = cf.command(deployment.service("redis"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [*args, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None, f"redis-server refused the service's command: {shlex.join(args)}"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def _local(url: str, port: int) -> str:
    """The URL with its host:port replaced by 127.0.0.1:port, the password kept as it is."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@127.0.0.1:{port}"))


def test_clients_log_in_to_the_redis_service_as_configured(
    deployment: Deployment, redis_service: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):  # Celery would prefer them to the URLs given here
        monkeypatch.delenv(name, raising=False)
    anonymous = redis.Redis(port=redis_service)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    for name in cf.REDIS_CLIENTS:
        url = _local(cf.redis_url(cf.client_environment(deployment.service(name))), redis_service)
        client = redis.Redis.from_url(url)  # staging
        try:
            assert client.ping(), name
            config = client.config_get("*")
            assert config["maxmemory-policy"] == "noeviction" and config["appendonly"] == "yes", name
            maxmemory = cf.option(cf.command(deployment.service("redis")), "--maxmemory") or ""
            assert int(config["maxmemory"] or 0) == cf.redis_memory_bytes(maxmemory), config["maxmemory"]
        finally:
            client.close()
        with Connection(url, connect_timeout=5) as broker:  # Celery's broker
            broker.ensure_connection(max_retries=1)
            channel: Any = broker.default_channel
            assert channel.client.ping(), name
        app = Celery("compose-check", broker=url, backend=url)  # Celery's result backend
        try:
            backend: Any = app.backend
            assert backend.client.ping(), name
        finally:
            app.close()


# --- structure a user relies on --------------------------------------------------------------------------------


def test_minio_keeps_its_data_and_reports_health(deployment: Deployment) -> None:
    minio = deployment.service("minio")
    assert cf.command(minio)[:2] == ["server", "/data"], cf.command(minio)
    assert any(v.startswith("minio-data:/data") for v in cf.as_list(minio.get("volumes")))
    assert "minio-data" in (deployment.config.get("volumes") or {})
    assert minio.get("healthcheck", {}).get("test"), "minio needs a healthcheck: minio-init waits for it"


def test_worker_starts_after_the_bucket_exists(services: dict[str, Any]) -> None:
    worker = services["worker"]
    deps = cf.depends_on(worker)
    assert deps.get("minio-init") == "service_completed_successfully", deps
    assert deps.get("redis") == "service_healthy", deps
    args = cf.command(worker)
    assert args[:4] == ["celery", "-A", "workers.app", "worker"], args
    assert not {"-B", "--beat"} & set(args), "beat runs as its own service: a worker with -B is a second beat"


def test_worker_and_beat_share_the_s3batch_environment(services: dict[str, Any]) -> None:
    worker = cf.client_environment(services["worker"])
    beat = cf.client_environment(services["beat"])
    shared = {name: value for name, value in worker.items() if name.startswith(("S3BATCH_", "CELERY_"))}
    assert shared == {name: value for name, value in beat.items() if name.startswith(("S3BATCH_", "CELERY_"))}
    assert shared.get("S3BATCH_BUCKET"), "workers need S3BATCH_BUCKET"


def test_there_is_exactly_one_beat(services: dict[str, Any]) -> None:
    beat = services["beat"]
    assert cf.command(beat)[:4] == ["celery", "-A", "workers.app", "beat"], cf.command(beat)
    assert beat.get("deploy", {}).get("replicas", 1) == 1
    others = [name for name, svc in services.items() if name != "beat" and _runs_beat(cf.command(svc))]
    assert not others, f"only the beat service may run beat, not {others}"


def test_metrics_serves_the_exporter_on_loopback_with_the_workers_settings(services: dict[str, Any]) -> None:
    metrics = services["metrics"]
    args = cf.command(metrics)
    assert args[:2] == ["s3batch", "metrics"] and cf.option(args, "--port") == "9808", args
    assert cf.published(metrics) == [("127.0.0.1", "9808")], cf.published(metrics)
    worker = cf.client_environment(services["worker"])
    mine = cf.client_environment(metrics)
    assert {k: v for k, v in mine.items() if k.startswith("S3BATCH_")} == {
        k: v for k, v in worker.items() if k.startswith("S3BATCH_")
    }  # the same caps and ages as the workers, for the alert rules


def test_flower_is_built_with_flower_installed(services: dict[str, Any]) -> None:
    build = services["flower"].get("build")
    assert isinstance(build, dict), "flower built from our Dockerfile needs build args that install flower"
    assert str((build.get("args") or {}).get("INSTALL_FLOWER")).lower() == "true", build
    assert "INSTALL_FLOWER" in cf.DOCKERFILE.read_text(encoding="utf-8")


def test_every_s3batch_variable_is_one_the_config_reads(services: dict[str, Any]) -> None:
    known = set(VARIABLES)
    used = set(re.findall(r"\bS3BATCH_[A-Z0-9_]+", cf.COMPOSE_FILE.read_text(encoding="utf-8")))
    for service in services.values():
        used |= {name for name in cf.environment(service) if name.startswith("S3BATCH_")}
    assert used, "no S3BATCH_* variable at all: the workers would not know their bucket"
    assert used <= known, f"batcher.config does not read {sorted(used - known)}"


def test_s3_is_configured_by_boto3s_own_variables() -> None:
    used = set(re.findall(r"\bAWS_[A-Z0-9_]+", cf.COMPOSE_FILE.read_text(encoding="utf-8")))
    assert used <= BOTO3_VARIABLES, f"boto3 does not read {sorted(used - BOTO3_VARIABLES)}"


def test_the_image_installs_the_package_and_runs_unprivileged() -> None:
    lines = _dockerfile_instructions()
    assert lines[0][0] == "FROM" and lines[0][1].startswith("python:3.11."), lines[0]
    for instruction, rest in lines:
        if instruction == "COPY" and not rest.startswith("--from"):
            *sources, _ = shlex.split(rest)
            missing = [src for src in sources if not (cf.ROOT / src).exists()]
            assert not missing, f"the Dockerfile copies {missing}, which the repository lacks"
    users = [rest.split(":")[0] for instruction, rest in lines if instruction == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    cmd = next(rest for instruction, rest in reversed(lines) if instruction == "CMD")
    assert "worker" in cmd and "workers.app" in cmd, cmd
    ignored = (cf.ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert ".env" in ignored, "the build context must not carry the compose secrets"


def _runs_beat(args: list[str]) -> bool:
    if args[:1] != ["celery"]:
        return False
    return "beat" in args or "-B" in args or "--beat" in args


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", cf.DOCKERFILE.read_text(encoding="utf-8"))
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            pairs.append((instruction.upper(), rest.strip()))
    return pairs
