"""docker-compose.yml and Dockerfile: the production-shaped deployment a user starts with one command.

The structure is checked with PyYAML (what a user relies on: durable Redis, the bucket created before
any worker starts, one beat, shared configuration); the whole file is validated against the
compose-spec schema by ``docker-compose config``, which needs no Docker engine.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from batcher.config import VARIABLES

yaml: Any
try:
    import yaml
except ImportError:  # a missing PyYAML must fail these tests, never skip them
    yaml = None

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SERVICES = ("redis", "minio", "createbucket", "worker", "beat", "flower")
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
INSTALL_COMPOSE = (
    "install the Debian package docker-compose (apt-get install -y docker-compose): its `docker-compose "
    "config` validates docker-compose.yml against the compose-spec schema without a Docker engine"
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    if yaml is None:
        pytest.fail("PyYAML is not installed: it comes with the dev extra (pip install -e '.[dev]')")
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, whichever of the two compose spellings it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {name: "" if value is None else str(value) for name, value in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependency name -> condition (service_started for the short list form)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def s3batch_env(service: dict[str, Any]) -> dict[str, str]:
    return {name: value for name, value in environment(service).items() if name.startswith("S3BATCH_")}


def test_every_service_a_user_relies_on_exists(services: dict[str, dict[str, Any]]) -> None:
    missing = [name for name in SERVICES if name not in services]
    assert not missing, f"docker-compose.yml lacks the services {missing}"


def test_redis_is_append_only_on_a_named_volume(compose: dict[str, Any], services: dict[str, Any]) -> None:
    redis = services["redis"]
    args = command(redis)
    # Staged objects live only in Redis until their batch is in S3: a restart must not lose them.
    assert args[:1] == ["redis-server"], args
    assert _option(args, "--appendonly") == "yes", f"redis must run with --appendonly yes: {args}"
    assert _option(args, "--appendfsync") in ("everysec", "always"), args
    assert _option(args, "--maxmemory-policy") in (None, "noeviction"), "evicting would drop staged objects"
    volume = _volume_on(redis, "/data")
    assert volume in (compose.get("volumes") or {}), f"redis /data is not a named volume: {volume!r}"
    assert redis.get("healthcheck", {}).get("test"), "redis needs a healthcheck: the workers wait for it"


def test_minio_keeps_its_data_and_reports_health(compose: dict[str, Any], services: dict[str, Any]) -> None:
    minio = services["minio"]
    assert command(minio)[:2] == ["server", "/data"], command(minio)
    assert _volume_on(minio, "/data") in (compose.get("volumes") or {})
    assert minio.get("healthcheck", {}).get("test"), "minio needs a healthcheck: createbucket waits for it"


def test_createbucket_creates_the_workers_bucket_once_minio_is_healthy(services: dict[str, Any]) -> None:
    job, minio, worker = services["createbucket"], services["minio"], services["worker"]
    assert str(job["image"]).split(":")[0].endswith("minio/mc"), job["image"]
    assert depends_on(job) == {"minio": "service_healthy"}
    script = " ".join(command(job)) + " " + " ".join(_as_list(job.get("entrypoint")))
    assert "mc mb" in script and "--ignore-existing" in script, script
    job_env, minio_env = environment(job), environment(minio)
    assert job_env["S3BATCH_BUCKET"] == environment(worker)["S3BATCH_BUCKET"], "another bucket"
    assert "$$S3BATCH_BUCKET" in script or job_env["S3BATCH_BUCKET"] in script, script
    for name in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert job_env[name] == minio_env[name], name
    assert job.get("restart", "no") == "no", "a one-shot job must not be restarted"


def test_worker_starts_after_the_bucket_exists(services: dict[str, Any]) -> None:
    worker = services["worker"]
    deps = depends_on(worker)
    assert deps.get("createbucket") == "service_completed_successfully", deps
    assert deps.get("redis") == "service_healthy", deps
    args = command(worker)
    assert args[:4] == ["celery", "-A", "workers.app", "worker"], args
    assert not {"-B", "--beat"} & set(args), "beat runs as its own service: a worker with -B is a second beat"


def test_worker_and_beat_share_the_s3batch_environment(services: dict[str, Any]) -> None:
    worker, beat = s3batch_env(services["worker"]), s3batch_env(services["beat"])
    assert worker == beat
    assert worker.get("S3BATCH_BUCKET"), "workers need S3BATCH_BUCKET"
    assert urlsplit(worker["S3BATCH_REDIS_URL"]).hostname == "redis", worker["S3BATCH_REDIS_URL"]
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        assert environment(services["worker"]).get(name) == environment(services["beat"]).get(name), name


def test_workers_reach_minio_as_its_root_user(services: dict[str, Any]) -> None:
    env, minio_env = environment(services["worker"]), environment(services["minio"])
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL", "")
    assert urlsplit(endpoint).hostname == "minio", endpoint
    assert env["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
    assert env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION"), "boto3 needs a region"


def test_there_is_exactly_one_beat(services: dict[str, Any]) -> None:
    beat = services["beat"]
    assert command(beat)[:4] == ["celery", "-A", "workers.app", "beat"], command(beat)
    assert beat.get("deploy", {}).get("replicas", 1) == 1
    others = [name for name, svc in services.items() if name != "beat" and _runs_beat(command(svc))]
    assert not others, f"only the beat service may run beat, not {others}"


def test_flower_watches_the_redis_broker_on_port_5555(services: dict[str, Any]) -> None:
    flower = services["flower"]
    args, env = command(flower), environment(flower)
    assert "flower" in args, args
    published = [_container_port(port) for port in flower.get("ports", [])]
    assert "5555" in published, flower.get("ports")
    broker = env.get("CELERY_BROKER_URL") or env.get("S3BATCH_REDIS_URL") or _option(args, "--broker") or ""
    assert urlsplit(broker).hostname == "redis", broker
    if "image" in flower and str(flower["image"]).startswith("mher/flower"):
        return
    # Built from our Dockerfile: the build must actually install flower.
    build = flower.get("build")
    assert isinstance(build, dict), "flower built from our Dockerfile needs build args that install flower"
    assert str((build.get("args") or {}).get("INSTALL_FLOWER")).lower() == "true", build
    assert "INSTALL_FLOWER" in DOCKERFILE.read_text(encoding="utf-8")


def test_every_s3batch_variable_is_one_the_config_reads(services: dict[str, Any]) -> None:
    known = set(VARIABLES)
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    used = set(re.findall(r"\bS3BATCH_[A-Z0-9_]+", text))
    for service in services.values():
        used |= set(s3batch_env(service))
    assert used, "no S3BATCH_* variable at all: the workers would not know their bucket"
    assert used <= known, f"batcher.config does not read {sorted(used - known)}"


def test_s3_is_configured_by_boto3s_own_variables() -> None:
    used = set(re.findall(r"\bAWS_[A-Z0-9_]+", COMPOSE_FILE.read_text(encoding="utf-8")))
    assert used <= BOTO3_VARIABLES, f"boto3 does not read {sorted(used - BOTO3_VARIABLES)}"


def test_the_image_installs_the_package_and_runs_unprivileged() -> None:
    lines = _dockerfile_instructions()
    assert lines[0][0] == "FROM" and lines[0][1].startswith("python:3.11-slim"), lines[0]
    for instruction, rest in lines:
        if instruction == "COPY" and not rest.startswith("--from"):
            *sources, _ = shlex.split(rest)
            missing = [src for src in sources if not (ROOT / src).exists()]
            assert not missing, f"the Dockerfile copies {missing}, which the repository lacks"
    users = [rest.split(":")[0] for instruction, rest in lines if instruction == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    cmd = next(rest for instruction, rest in reversed(lines) if instruction == "CMD")
    assert "worker" in cmd and "workers.app" in cmd, cmd


def test_compose_file_is_valid_for_docker_compose(tmp_path: Path) -> None:
    runner = _compose_command()
    if runner is None:
        pytest.fail(f"neither docker-compose nor the docker compose plugin is installed: {INSTALL_COMPOSE}")
    # A clean environment: the test's own S3BATCH_*/AWS_* must not leak into interpolation.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    result = subprocess.run(
        [*runner, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{' '.join(runner)} config rejected docker-compose.yml:\n{result.stderr}"
    assert "WARN" not in result.stderr.upper(), result.stderr


def _compose_command() -> list[str] | None:
    """docker-compose (the Debian package) or, failing that, the docker compose plugin."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    return None


def _option(args: list[str], name: str) -> str | None:
    """The value of ``--name value`` or ``--name=value`` in an argument list."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def _volume_on(service: dict[str, Any], target: str) -> str | None:
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            if rest.split(":")[0] == target:
                return source
        elif volume.get("target") == target:
            return str(volume.get("source"))
    return None


def _container_port(port: Any) -> str:
    """The container side of a ports entry ("127.0.0.1:5555:5555/tcp", "5555" or the long form)."""
    if isinstance(port, dict):
        return str(port.get("target"))
    return str(port).split("/")[0].rsplit(":", 1)[-1]


def _runs_beat(args: list[str]) -> bool:
    if args[:1] != ["celery"]:
        return False
    return "beat" in args or "-B" in args or "--beat" in args


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            pairs.append((instruction.upper(), rest.strip()))
    return pairs
