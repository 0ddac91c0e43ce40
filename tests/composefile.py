"""docker-compose.yml as docker-compose resolves it, and one check per property the deployment promises.

Each ``check_*`` raises AssertionError saying what is wrong; tests/test_compose.py runs every check on the
shipped file and on a copy mutated to lose that property, so that a check that cannot fail is caught too.
``docker-compose config`` (the Debian package, compose v1) needs no Docker engine: it interpolates the
variables, merges the YAML anchors and validates the file against the compose-spec schema.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

# PyYAML comes with the dev extra; imported this way because it ships no type hints.
yaml: Any = importlib.import_module("yaml")

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
INSTALL_COMPOSE = (
    "install the Debian package docker-compose (apt-get install -y docker-compose): its `docker-compose "
    "config` validates docker-compose.yml against the compose-spec schema without a Docker engine"
)

# Secrets the deployment must refuse to start without: no default anywhere.
SECRETS = (
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "MINIO_WORKER_ACCESS_KEY",
    "MINIO_WORKER_SECRET_KEY",
    "REDIS_PASSWORD",
    "FLOWER_USER",
    "FLOWER_PASSWORD",
)
# Distinct sample values; the Redis password holds what a URL must percent-encode (and a "$", which
# compose escapes as "$$" in its output).
SAMPLE_SECRETS = {
    "MINIO_ROOT_USER": "sample-root",
    "MINIO_ROOT_PASSWORD": "sample-root-password",
    "MINIO_WORKER_ACCESS_KEY": "sample-worker",
    "MINIO_WORKER_SECRET_KEY": "sample-worker-secret",
    "REDIS_PASSWORD": "p@ss:w/rd %#?&+\"'$x",
    "FLOWER_USER": "sample-flower",
    "FLOWER_PASSWORD": "sample-flower-password",
}
WORKER_POLICY_NAME = "s3batch-worker"
WORKER_ACTIONS = ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"]  # README, "Minimal IAM policy"
REDIS_CLIENTS = ("worker", "beat", "flower", "metrics")
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
_EXACT_TAG = re.compile(r"^(\d+\.\d+\.\d+([-.][\w.-]+)?|RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z)$")


@dataclass(frozen=True)
class Deployment:
    """One compose file, its text and its configuration as docker-compose resolved it for ``env``."""

    path: Path
    env: Mapping[str, str]
    text: str
    config: dict[str, Any]

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        services: dict[str, dict[str, Any]] = self.config["services"]
        return services

    def service(self, name: str) -> dict[str, Any]:
        assert name in self.services, f"{self.path.name} has no service {name!r}"
        return self.services[name]


def compose_command() -> list[str] | None:
    """docker-compose (the Debian package) or, failing that, the docker compose plugin."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    return None


@cache
def _scratch() -> Path:
    """A directory of this process for docker-compose's HOME and an empty env file (nothing written in the repo)."""
    scratch = Path(tempfile.mkdtemp(prefix="s3batch-compose-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    (scratch / "empty.env").write_text("", encoding="utf-8")
    return scratch


def run_config(path: Path, env: Mapping[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` of ``path`` with exactly ``env``: no .env file, none of the caller's variables."""
    runner = compose_command()
    assert runner is not None, f"neither docker-compose nor the docker compose plugin is installed: {INSTALL_COMPOSE}"
    scratch = _scratch()
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch), **env}
    return subprocess.run(
        [*runner, "--env-file", str(scratch / "empty.env"), "-f", str(path), "config", *extra],
        cwd=path.parent,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def resolve(path: Path, env: Mapping[str, str]) -> Deployment:
    """The deployment as docker-compose resolves it; AssertionError with its message if it refuses."""
    result = run_config(path, env)
    assert result.returncode == 0, f"docker-compose config rejected {path.name}:\n{result.stderr}"
    config = _unescape(yaml.safe_load(result.stdout))
    return Deployment(path=path, env=dict(env), text=path.read_text(encoding="utf-8"), config=config)


def example_env() -> dict[str, str]:
    """The variables .env.example sets (KEY=VALUE lines; empty values included)."""
    pairs: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r} is not KEY=VALUE"
            pairs[name.strip()] = value.strip()
    return pairs


def sample_env() -> dict[str, str]:
    """.env.example with its empty secrets filled with SAMPLE_SECRETS: what a user's .env looks like."""
    env = example_env()
    env.update({name: SAMPLE_SECRETS[name] for name, value in env.items() if not value and name in SAMPLE_SECRETS})
    return env


# --- reading a service -----------------------------------------------------------------------------------------


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, whichever of the two compose spellings it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {name: "" if value is None else str(value) for name, value in env.items()}


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def command(service: Mapping[str, Any]) -> list[str]:
    return as_list(service.get("command"))


def option(args: list[str], name: str) -> str | None:
    """The value of ``--name value`` or ``--name=value`` in an argument list."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    """Dependency name -> condition (service_started for the short list form)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def published(service: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(host IP, container port) of every published port ("" for all interfaces)."""
    ports = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ports.append((str(port.get("host_ip") or ""), str(port.get("target"))))
            continue
        parts = str(port).split("/")[0].split(":")
        host_ip = parts[0] if len(parts) == 3 else ""
        ports.append((host_ip, parts[-1]))
    return ports


def client_environment(service: Mapping[str, Any]) -> dict[str, str]:
    """The environment the service's command starts with, after its entrypoint (run here, not in a container).

    The only entrypoint a Redis client may have is ``python -c SCRIPT`` that execs its arguments: it is run with
    this interpreter, and the command it execs reports its environment.
    """
    env = environment(service)
    entrypoint = as_list(service.get("entrypoint"))
    if not entrypoint:
        return env
    assert entrypoint[:2] == ["python", "-c"] and len(entrypoint) == 3, f"unexpected entrypoint {entrypoint}"
    report = "import json, os; print(json.dumps(dict(os.environ)))"
    result = subprocess.run(
        [sys.executable, "-c", entrypoint[2], sys.executable, "-c", report],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"the entrypoint failed: {result.stderr}"
    started: dict[str, str] = json.loads(result.stdout)
    started.pop("PATH", None)
    return started


def redis_url(env: Mapping[str, str]) -> str:
    """The broker URL a Celery client of s3batch ends up with (CELERY_BROKER_URL wins over S3BATCH_REDIS_URL)."""
    return env.get("CELERY_BROKER_URL") or env.get("S3BATCH_REDIS_URL") or ""


def redis_memory_bytes(value: str) -> int:
    """Redis' memory units: 1k = 1000, 1kb = 1024, and so on for m/mb and g/gb."""
    match = re.fullmatch(r"(\d+)\s*([kmg]b?)?", value.strip().lower())
    assert match, f"{value!r} is not a Redis memory size"
    units = {"": 1, "k": 10**3, "kb": 2**10, "m": 10**6, "mb": 2**20, "g": 10**9, "gb": 2**30}
    return int(match.group(1)) * units[match.group(2) or ""]


def worker_policy(deployment: Deployment) -> dict[str, Any]:
    """The policy document the init job creates (its WORKER_POLICY variable)."""
    raw = environment(deployment.service("minio-init")).get("WORKER_POLICY")
    assert raw, "minio-init has no WORKER_POLICY: which policy would the workers get?"
    policy: dict[str, Any] = json.loads(raw)
    return policy


# --- the checks -----------------------------------------------------------------------------------------------

Check = Callable[[Deployment], None]


def check_required_secret(deployment: Deployment, name: str) -> None:
    """``docker-compose config`` fails, naming ``name``, when it is unset and when it is empty."""
    for value in (None, ""):
        env = {key: val for key, val in deployment.env.items() if key != name}
        if value is not None:
            env[name] = value
        result = run_config(deployment.path, env, "-q")
        state = "unset" if value is None else "empty"
        assert result.returncode != 0, f"docker-compose config accepts {name} {state}: it needs a default-free :?"
        assert name in result.stderr, f"with {name} {state}, the error does not name it: {result.stderr}"
    spelled = re.findall(r"\$\{" + name + r"\b([^}]*)\}", deployment.text)
    assert spelled, f"{name} is never interpolated"
    assert all(rest.startswith(":?") for rest in spelled), f"every ${{{name}...}} must be :? (required): {spelled}"


def check_required_secrets(deployment: Deployment) -> None:
    for name in SECRETS:
        check_required_secret(deployment, name)


def check_redis_server(deployment: Deployment) -> None:
    """Password, maxmemory with noeviction, append-only persistence on a named volume, a healthcheck that logs in."""
    redis = deployment.service("redis")
    args = command(redis)
    assert args[:1] == ["redis-server"], args
    assert option(args, "--requirepass"), f"redis must ask for a password (--requirepass): {args}"
    assert option(args, "--requirepass") == deployment.env.get("REDIS_PASSWORD"), "not the REDIS_PASSWORD"
    # Staged objects live only in Redis until their batch is in S3: a restart must not lose them, and a full
    # Redis must refuse writes rather than evict them.
    assert option(args, "--appendonly") == "yes", f"redis must run with --appendonly yes: {args}"
    assert option(args, "--appendfsync") in ("everysec", "always"), args
    assert option(args, "--maxmemory-policy") == "noeviction", f"evicting would drop staged objects: {args}"
    maxmemory = option(args, "--maxmemory")
    assert maxmemory, f"redis needs --maxmemory, or it grows until the host kills it: {args}"
    staged = int(environment(deployment.service("worker")).get("S3BATCH_MAX_STAGED_BYTES") or 2**30)
    assert redis_memory_bytes(maxmemory) >= 1.5 * staged, (
        f"--maxmemory {maxmemory} leaves too little room above S3BATCH_MAX_STAGED_BYTES={staged} (README: 1.5x)"
    )
    volume = next((v.split(":")[0] for v in as_list(redis.get("volumes")) if ":/data" in v), None)
    assert volume in (deployment.config.get("volumes") or {}), f"redis /data is not a named volume: {volume!r}"
    test = " ".join(as_list((redis.get("healthcheck") or {}).get("test")))
    assert "redis-cli" in test and "PONG" in test, (
        f"the healthcheck must see PONG (redis-cli exits 0 on NOAUTH): {test}"
    )
    auth = environment(redis).get("REDISCLI_AUTH")
    assert auth == deployment.env.get("REDIS_PASSWORD"), "the healthcheck's redis-cli needs REDISCLI_AUTH"


def check_redis_clients(deployment: Deployment) -> None:
    """Every Redis client's URL carries the password, percent-encoded, and points at the redis service."""
    password = option(command(deployment.service("redis")), "--requirepass")
    for name in REDIS_CLIENTS:
        url = redis_url(client_environment(deployment.service(name)))
        scheme, _, rest = url.partition("://")
        userinfo, _, location = rest.rpartition("@")
        assert scheme == "redis" and location.split("/")[0] == "redis:6379", f"{name} does not use redis: {url!r}"
        assert userinfo.startswith(":") and len(userinfo) > 1, f"{name}'s Redis URL has no password: {url!r}"
        encoded = userinfo[1:]
        assert re.fullmatch(r"[A-Za-z0-9%._~-]+", encoded), f"{name}'s Redis password is not percent-encoded: {url!r}"
        assert unquote(encoded) == password, f"{name}'s Redis URL carries another password"
        assert urlsplit(url).hostname == "redis", f"{name}'s Redis URL does not parse: {url!r}"


def check_worker_identity(deployment: Deployment) -> None:
    """Workers use their own MinIO user (created by minio-init), never root; beat, Flower and metrics get no S3 keys."""
    minio, init = environment(deployment.service("minio")), environment(deployment.service("minio-init"))
    worker = environment(deployment.service("worker"))
    endpoint = worker.get("AWS_ENDPOINT_URL_S3") or worker.get("AWS_ENDPOINT_URL", "")
    assert urlsplit(endpoint).hostname == "minio", endpoint
    assert worker.get("AWS_DEFAULT_REGION") or worker.get("AWS_REGION"), "boto3 needs a region"
    assert worker.get("AWS_ACCESS_KEY_ID") and worker.get("AWS_SECRET_ACCESS_KEY"), "workers need S3 credentials"
    assert worker["AWS_ACCESS_KEY_ID"] != minio["MINIO_ROOT_USER"], "the workers use MinIO's root user"
    assert worker["AWS_SECRET_ACCESS_KEY"] != minio["MINIO_ROOT_PASSWORD"], "the workers use MinIO's root password"
    assert init.get("MINIO_WORKER_ACCESS_KEY") == worker["AWS_ACCESS_KEY_ID"], "minio-init creates another user"
    assert init.get("MINIO_WORKER_SECRET_KEY") == worker["AWS_SECRET_ACCESS_KEY"], "minio-init sets another secret"
    root_password = minio["MINIO_ROOT_PASSWORD"]
    holders = sorted(
        name for name, service in deployment.services.items() if root_password in json.dumps(service, sort_keys=True)
    )
    assert holders == ["minio", "minio-init"], f"MinIO's root password reaches {holders}"
    for name in ("beat", "flower", "metrics"):
        keys = {k for k in environment(deployment.service(name)) if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        assert not keys, f"{name} never touches S3 but gets {sorted(keys)}"


def check_worker_policy(deployment: Deployment) -> None:
    """The policy allows exactly PutObject, GetObject and AbortMultipartUpload, on the batch prefix only."""
    worker = environment(deployment.service("worker"))
    bucket, prefix = worker["S3BATCH_BUCKET"], worker.get("S3BATCH_PREFIX", "batches/")
    policy = worker_policy(deployment)
    assert policy.get("Version") == "2012-10-17", policy
    statements = policy.get("Statement")
    assert isinstance(statements, list) and len(statements) == 1, f"one Allow statement, nothing else: {statements}"
    statement = statements[0]
    assert set(statement) == {"Effect", "Action", "Resource"}, f"unexpected keys {sorted(statement)}"
    assert statement["Effect"] == "Allow", statement
    assert sorted(as_list(statement["Action"])) == sorted(WORKER_ACTIONS), f"actions {statement['Action']}"
    assert len(as_list(statement["Action"])) == len(WORKER_ACTIONS), "duplicated actions"
    resources = [statement["Resource"]] if isinstance(statement["Resource"], str) else statement["Resource"]
    assert resources == [f"arn:aws:s3:::{bucket}/{prefix}*"], f"resources {resources}"


def run_init_script(deployment: Deployment, tmp_path: Path, *, attach_fails: bool = False) -> list[list[str]]:
    """minio-init's script run by /bin/sh against a stand-in ``mc`` that records its calls; AssertionError if it fails.

    The stand-in prints a user's policy on ``admin user info`` and, with ``attach_fails``, refuses ``admin
    policy attach`` (as an mc that treats "already attached" as an error would).
    """
    init = deployment.service("minio-init")
    entrypoint, script = as_list(init.get("entrypoint")), command(init)
    assert entrypoint[:1] == ["/bin/sh"] and len(script) == 1, f"expected /bin/sh -c SCRIPT: {entrypoint} {script}"
    bin_dir, log = tmp_path / "bin", tmp_path / "mc-calls.jsonl"
    bin_dir.mkdir(exist_ok=True)
    log.unlink(missing_ok=True)
    fake = bin_dir / "mc"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "args = sys.argv[1:]\n"
        "if args[:3] == ['admin', 'policy', 'create']:\n"
        "    args.append(open(args[5], encoding='utf-8').read())\n"
        f"with open({str(log)!r}, 'a', encoding='utf-8') as out:\n"
        "    out.write(json.dumps(args) + '\\n')\n"
        "if args[:3] == ['admin', 'policy', 'attach'] and os.environ.get('FAKE_MC_ATTACH_FAILS'):\n"
        "    sys.exit(1)\n"
        "if args[:3] == ['admin', 'user', 'info']:\n"
        "    print('AccessKey: ' + args[4] + '\\nStatus: enabled\\nPolicyName: ' + os.environ['FAKE_MC_POLICY'])\n",
        encoding="utf-8",
    )
    fake.chmod(0o755)
    env = {
        **environment(init),
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "TMPDIR": str(tmp_path),
        "FAKE_MC_POLICY": WORKER_POLICY_NAME,
        **({"FAKE_MC_ATTACH_FAILS": "1"} if attach_fails else {}),
    }
    result = subprocess.run(
        ["/bin/sh", *entrypoint[1:], script[0]], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"minio-init's script failed ({result.returncode}): {result.stderr}"
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


def check_init_job(deployment: Deployment, tmp_path: Path) -> None:
    """minio-init, the one root-holding job, creates the bucket, the policy and the user, and attaches it."""
    init, worker = deployment.service("minio-init"), deployment.service("worker")
    assert str(init.get("image", "")).split(":")[0].endswith("minio/mc"), init.get("image")
    assert depends_on(init) == {"minio": "service_healthy"}, depends_on(init)
    assert str(init.get("restart", "no")) == "no", "a one-shot job must not be restarted"
    assert depends_on(worker).get("minio-init") == "service_completed_successfully", depends_on(worker)
    env, worker_env = environment(init), environment(worker)
    key, secret = worker_env["AWS_ACCESS_KEY_ID"], worker_env["AWS_SECRET_ACCESS_KEY"]
    calls = run_init_script(deployment, tmp_path)
    creates = [c for c in calls if c[:3] == ["admin", "policy", "create"]]
    expected = {
        "logs in as root": [
            "alias",
            "set",
            "root",
            "http://minio:9000",
            env["MINIO_ROOT_USER"],
            env["MINIO_ROOT_PASSWORD"],
        ],
        "creates the bucket": ["mb", "--ignore-existing", f"root/{worker_env['S3BATCH_BUCKET']}"],
        "creates the worker user": ["admin", "user", "add", "root", key, secret],
        "attaches the policy": ["admin", "policy", "attach", "root", WORKER_POLICY_NAME, "--user", key],
    }
    for what, call in expected.items():
        assert call in calls, f"minio-init never {what}: expected mc {call}, got {calls}"
    assert len(creates) == 1 and creates[0][3:5] == ["root", WORKER_POLICY_NAME], f"policy create calls: {creates}"
    assert json.loads(creates[0][-1]) == worker_policy(deployment), "the policy file is not WORKER_POLICY"
    order = [calls.index(call) for call in expected.values()]
    assert order == sorted(order) and calls.index(creates[0]) < order[-1], f"out of order: {calls}"


def check_flower_auth(deployment: Deployment) -> None:
    """Flower asks for basic auth from the required secrets and listens on 127.0.0.1 only."""
    flower = deployment.service("flower")
    args, env = command(flower), environment(flower)
    assert "flower" in args, args
    credentials = env.get("FLOWER_BASIC_AUTH") or option(args, "--basic-auth") or ""
    expected = f"{deployment.env.get('FLOWER_USER')}:{deployment.env.get('FLOWER_PASSWORD')}"
    assert credentials == expected, f"Flower's basic auth is {credentials!r}, not FLOWER_USER:FLOWER_PASSWORD"
    assert "," not in credentials, "Flower splits --basic-auth on commas"
    ports = published(flower)
    assert ("127.0.0.1", "5555") in ports and all(ip == "127.0.0.1" for ip, _ in ports), ports


def check_loopback_ports(deployment: Deployment) -> None:
    """Every published port listens on 127.0.0.1 only."""
    for name, service in deployment.services.items():
        for host_ip, port in published(service):
            assert host_ip == "127.0.0.1", f"{name} publishes {port} on {host_ip or 'every interface'}"


def check_pinned_images(deployment: Deployment) -> None:
    """Registry images carry an exact version tag and a digest; local builds are never called latest."""
    for name, service in deployment.services.items():
        image = str(service.get("image", ""))
        name_tag = _DIGEST.sub("", image)
        repository, _, tag = name_tag.rpartition(":") if ":" in name_tag.split("/")[-1] else (name_tag, "", "")
        assert tag and tag != "latest", f"{name}: image {image!r} has no tag or is latest"
        if "build" in service:
            continue
        assert _DIGEST.search(image), f"{name}: {image!r} has no @sha256 digest"
        assert _EXACT_TAG.match(tag), f"{name}: {repository}:{tag} is not an exact version"


def check_dockerfile_pinned(dockerfile: str) -> None:
    """The base image has an exact tag and a digest; Flower is installed at one version."""
    base = next(line.split()[1] for line in dockerfile.splitlines() if line.upper().startswith("FROM "))
    assert _DIGEST.search(base), f"FROM {base} has no digest"
    tag = _DIGEST.sub("", base).rpartition(":")[2]
    assert _EXACT_TAG.match(tag), f"FROM {base}: not an exact version"
    installs = re.findall(r"pip install [^\n;&]*flower[^\s\"']*", dockerfile)
    assert installs and all(re.search(r"flower==\d", spec) for spec in installs), f"flower is not pinned: {installs}"


def _unescape(value: Any) -> Any:
    """docker-compose config writes a literal $ as $$: give the values their runtime form."""
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [_unescape(item) for item in value]
    if isinstance(value, dict):
        return {key: _unescape(item) for key, item in value.items()}
    return value
