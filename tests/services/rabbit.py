"""RabbitMQ for the tests: a fresh vhost on the shared node, or a private node with its own settings.

``RabbitMQ`` adds a vhost named with a unique prefix to the RabbitMQ already running on 127.0.0.1:5672
(``rabbitmqctl add_vhost`` + ``set_permissions``) and deletes it on ``close()``: about 0.8 s to create and
0.4 s to delete, each ``rabbitmqctl`` call being a short-lived Erlang VM. Nothing else on that node changes.

``RabbitMQNode`` runs a private RabbitMQ node (its own epmd, AMQP and distribution ports, data in a temporary
directory, settings written to its own rabbitmq.conf) for tests that need a node setting, such as
``consumer_timeout``, which on RabbitMQ 3.10 exists only per node: setting it on the shared node would change
it for everybody else's consumers. It starts in 3.5-4 s and stops in about 1 s.

Consumer timeouts measured on 3.10.8 (tests/services/README.md has the details):

- ``consumer_timeout`` (milliseconds, a node setting in rabbitmq.conf) works: a channel holding an
  unacknowledged delivery longer than that is closed with ``406 PRECONDITION_FAILED - delivery
  acknowledgement on channel 1 timed out`` and the message is ready again at once. The check runs on the
  channel's tick, ``channel_tick_interval`` (default 60000 ms, advanced.config only): with the default a
  5 s timeout fired after 60.0 s; with a 1000 ms tick after 5.0 s;
- ``rabbitmqctl eval 'application:set_env(rabbit, consumer_timeout, 5000).'`` (and the same for
  ``channel_tick_interval``) works at runtime, but only for channels opened afterwards, and for every vhost
  of the node: never on the shared node;
- the ``x-consumer-timeout`` queue argument (3.12+) is accepted and ignored on 3.10;
- without any node setting, a consumer whose process hangs entirely (SIGSTOP) loses its deliveries after
  twice the negotiated heartbeat (2 s heartbeat: 4.0 s; 5 s: 10.1 s). A hung task in a live Celery worker
  does not stop its heartbeats, so only ``consumer_timeout`` (or Celery's time limits) bounds that case.

When RabbitMQ is installed but stopped (CI): ``rabbitmq-server -detached && rabbitmqctl await_startup``, as
root or the rabbitmq user (``scripts/ensure-system-packages --test`` does it); Debian package
``rabbitmq-server``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

from tests.services.processes import LOOPBACK, ChildProcess, ServiceError, free_ports, port_open, run, wait_until

SHARED_PORT = 5672
_SBIN = Path("/usr/lib/rabbitmq/bin")  # Debian's real scripts; /usr/sbin/* wrappers `su rabbitmq` as root


def _shared_ctl() -> str:
    """The rabbitmqctl for the shared node (the wrapper that runs as the rabbitmq user, for its cookie)."""
    found = shutil.which("rabbitmqctl") or shutil.which("rabbitmqctl", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise ServiceError(
            "rabbitmqctl is not installed: install RabbitMQ (Debian: apt-get install rabbitmq-server, "
            "or scripts/ensure-system-packages --test)"
        )
    return found


def rabbitmq_available(port: int = SHARED_PORT) -> str | None:
    """None when the shared RabbitMQ answers on ``127.0.0.1:port`` and rabbitmqctl exists, else the reason."""
    if shutil.which("rabbitmqctl") is None and shutil.which("rabbitmqctl", path="/usr/sbin") is None:
        return "rabbitmqctl is not installed (Debian package rabbitmq-server; scripts/ensure-system-packages --test)"
    if not port_open(port):
        return (
            f"RabbitMQ does not listen on {LOOPBACK}:{port}: start it with "
            "`rabbitmq-server -detached && rabbitmqctl await_startup` (as root or the rabbitmq user)"
        )
    return None


class RabbitMQ:
    """A vhost of its own on the shared RabbitMQ node, deleted on ``close()``.

    ``url`` is ``amqp://guest:guest@127.0.0.1:5672/<vhost>``. Raises ServiceError (with rabbitmqctl's
    message) when the node is not running or rabbitmqctl cannot reach it.
    """

    def __init__(
        self,
        *,
        port: int = SHARED_PORT,
        user: str = "guest",
        password: str = "guest",
        prefix: str = "s3batch-test",
    ) -> None:
        reason = rabbitmq_available(port)
        if reason is not None:
            raise ServiceError(reason)
        self.ctl = _shared_ctl()
        self.port = port
        self.user = user
        self.password = password
        # Unique per run and process; only [a-z0-9-] so the URL needs no quoting.
        self.vhost = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.url = f"amqp://{user}:{password}@{LOOPBACK}:{port}/{self.vhost}"
        self._created = False
        started = time.monotonic()
        run([self.ctl, "-q", "add_vhost", self.vhost], what=f"creating RabbitMQ vhost {self.vhost}")
        self._created = True
        try:
            run(
                [self.ctl, "-q", "set_permissions", "-p", self.vhost, user, ".*", ".*", ".*"],
                what=f"granting {user} every permission on RabbitMQ vhost {self.vhost}",
            )
        except BaseException:
            self.close()
            raise
        self.startup_s = time.monotonic() - started

    def ctl_command(self, *arguments: str) -> str:
        """Run ``rabbitmqctl -q <arguments>`` against the shared node and return its output."""
        return run([self.ctl, "-q", *arguments], what="rabbitmqctl")

    def close(self) -> None:
        """Delete the vhost with its queues, exchanges and connections."""
        if self._created:
            run([self.ctl, "-q", "delete_vhost", self.vhost], what=f"deleting RabbitMQ vhost {self.vhost}")
            self._created = False

    def __enter__(self) -> RabbitMQ:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def list_vhosts() -> list[str]:
    """The vhosts of the shared node (to check that tests leave none behind)."""
    output = run([_shared_ctl(), "-q", "list_vhosts", "--no-table-headers"], what="listing RabbitMQ vhosts")
    return [line.strip() for line in output.splitlines() if line.strip()]


class RabbitMQNode:
    """A private RabbitMQ node on free loopback ports, for tests that need a node setting.

    ``settings`` become rabbitmq.conf lines and ``rabbit_env`` the rabbit application's Erlang terms in
    advanced.config, for example ``RabbitMQNode(settings={"consumer_timeout": "2000"},
    rabbit_env={"channel_tick_interval": "250"})``. It runs as the current user with its own epmd (so nothing
    outlives it), its own Erlang cookie (``HOME`` is its directory) and every port on loopback; ``url`` is
    ``amqp://guest:guest@127.0.0.1:<port>/``. Raises ServiceError with the node's log when it does not answer
    within ``start_timeout_s``.
    """

    def __init__(
        self,
        *,
        settings: dict[str, str] | None = None,
        rabbit_env: dict[str, str] | None = None,
        start_timeout_s: float = 60.0,
    ) -> None:
        for tool in ("rabbitmq-server", "rabbitmqctl"):
            if not (_SBIN / tool).exists():
                raise ServiceError(
                    f"{_SBIN / tool} is missing: install RabbitMQ (Debian: apt-get install rabbitmq-server)"
                )
        epmd = shutil.which("epmd") or shutil.which("epmd", path="/usr/lib/erlang/bin")
        if epmd is None:
            raise ServiceError("epmd (Erlang) is missing: install erlang-base (a dependency of rabbitmq-server)")
        self.directory = Path(tempfile.mkdtemp(prefix="s3batch-rabbitmq-"))
        self.amqp_port, self.dist_port, self.epmd_port = free_ports(3)
        self.nodename = f"s3batch{self.amqp_port}@localhost"
        self.url = f"amqp://guest:guest@{LOOPBACK}:{self.amqp_port}/"
        self.log_path = self.directory / "rabbitmq-server.log"
        self.processes: list[ChildProcess] = []
        lines = [f"listeners.tcp.default = {LOOPBACK}:{self.amqp_port}", "loopback_users = none"]
        lines += [f"{key} = {value}" for key, value in (settings or {}).items()]
        (self.directory / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        # advanced.config holds the rabbit application's settings that rabbitmq.conf has no key for.
        terms = ", ".join(f"{{{key}, {value}}}" for key, value in (rabbit_env or {}).items())
        (self.directory / "advanced.config").write_text(f"[{{rabbit, [{terms}]}}].\n")
        (self.directory / "enabled_plugins").write_text("[].\n")
        (self.directory / "rabbitmq-env.conf").write_text("")  # keep /etc/rabbitmq/rabbitmq-env.conf out
        started = time.monotonic()
        try:
            self.processes.append(
                ChildProcess(
                    [epmd, "-port", str(self.epmd_port), "-address", LOOPBACK],
                    name="epmd",
                    log_path=self.directory / "epmd.log",
                )
            )
            wait_until(lambda: port_open(self.epmd_port), what="epmd", timeout_s=10, processes=self.processes)
            server = ChildProcess(
                [str(_SBIN / "rabbitmq-server")],
                name=f"rabbitmq-server {self.nodename}",
                log_path=self.log_path,
                env=self.env(),
                cwd=self.directory,
            )
            self.processes.append(server)
            wait_until(
                lambda: port_open(self.amqp_port),
                what=f"RabbitMQ node {self.nodename} to listen on {LOOPBACK}:{self.amqp_port}",
                timeout_s=start_timeout_s,
                processes=[server],
            )
            self.ctl("await_startup", "--timeout", str(int(start_timeout_s)))
        except BaseException:
            self.close()
            raise
        self.startup_s = time.monotonic() - started

    def env(self) -> dict[str, str]:
        """The environment of the node and of rabbitmqctl calls against it."""
        d = self.directory
        loopback_dist = "-kernel inet_dist_use_interface {127,0,0,1}"
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(d),  # the Erlang cookie lives here
            "LANG": "C.UTF-8",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": LOOPBACK,
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(d / "plugins-expand"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": loopback_dist,
            "RABBITMQ_CTL_ERL_ARGS": loopback_dist,
        }

    def ctl(self, *arguments: str, timeout_s: float = 90) -> str:
        """Run ``rabbitmqctl -n <node> -q <arguments>`` against this node and return its output."""
        return run(
            [str(_SBIN / "rabbitmqctl"), "-n", self.nodename, "-q", *arguments],
            what=f"rabbitmqctl on {self.nodename}",
            timeout_s=timeout_s,
            env=self.env(),
        )

    def close(self) -> None:
        """Stop the node and its epmd (SIGTERM, then SIGKILL) and remove its directory."""
        for process in reversed(self.processes):
            process.stop(timeout_s=15)
        self.processes.clear()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RabbitMQNode:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
