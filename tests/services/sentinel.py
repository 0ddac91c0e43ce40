"""A private Redis Sentinel group for the tests: one master, one replica, three sentinels, on free ports.

Sentinels run as ``redis-server <file> --sentinel`` with a config file each (they rewrite it, so it lives in
their own directory) and quorum 2. ``down-after-milliseconds`` (1000) and ``failover-timeout`` (5000) are
short so that after ``kill_master()`` a replica is promoted within a few seconds (measured on 2 cores:
1.2-3.0 s, 2.2 s typically, until ``wait_for_failover`` sees 2 sentinels name the new master and it says it
is one). The replica syncs at once (``repl-diskless-sync-delay 0``); the group is ready when its link to
the master is up and every sentinel sees it as a healthy replica and knows the two other sentinels: 2.1 s,
most of it the sentinels finding each other (hello messages every 2 s). ``restart()`` brings a killed node
back as a replica and waits until the sentinels see it healthy (about 1.1 s): a failover right after a
restart took 11-12 s when that wait was missing.

``url`` has Celery/kombu's form ``sentinel://127.0.0.1:P1;sentinel://127.0.0.1:P2;sentinel://127.0.0.1:P3/0``;
kombu and Celery also need ``transport_options`` (``{"master_name": ...}``) as ``broker_transport_options``
and ``result_backend_transport_options``.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from tests.services.processes import LOOPBACK, ChildProcess, ServiceError, free_ports, port_open, wait_until

Address = tuple[str, int]


class RedisSentinel:
    """One Redis master, its replica and three sentinels watching them as ``master_name``.

    Raises ServiceError when redis-server is missing or the group is not ready within ``start_timeout_s``.
    """

    def __init__(
        self,
        *,
        master_name: str = "s3batch",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        start_timeout_s: float = 30.0,
    ) -> None:
        if shutil.which("redis-server") is None:
            raise ServiceError("redis-server is not installed: apt-get install redis-server")
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.directory = Path(tempfile.mkdtemp(prefix="s3batch-redis-sentinel-"))
        master_port, replica_port, *sentinel_ports = free_ports(5)
        self.data_ports = [master_port, replica_port]
        self.sentinel_ports = sentinel_ports
        self.initial_master: Address = (LOOPBACK, master_port)
        self.processes: dict[int, ChildProcess] = {}
        started = time.monotonic()
        try:
            self._start_data_node(master_port, replica_of=None)
            self._start_data_node(replica_port, replica_of=master_port)
            self._wait_listening(start_timeout_s)
            # Sentinels learn about replicas from the master's INFO, which they read at once and then every
            # 10 s: start them once the replica is attached, or the group may take 10 s more to be ready.
            wait_until(
                functools.partial(self._replicas_synced, master_port),
                what=f"the replica {replica_port} to sync with the master {master_port}",
                timeout_s=start_timeout_s,
                log=self.directory / f"redis-{replica_port}" / "redis.log",
            )
            for port in sentinel_ports:
                self._start_sentinel(port, master_port)
            self._wait_listening(start_timeout_s)
            wait_until(
                self._ready,
                what=f"the replica to sync and every sentinel to see {master_name}, its replica and 2 other sentinels",
                timeout_s=start_timeout_s,
                log=self.directory / f"sentinel-{sentinel_ports[0]}" / "sentinel.log",
            )
        except BaseException:
            self.close()
            raise
        self.startup_s = time.monotonic() - started

    def _wait_listening(self, timeout_s: float) -> None:
        for port, process in self.processes.items():
            wait_until(
                functools.partial(port_open, port),
                what=f"{process.name} to listen",
                timeout_s=timeout_s,
                processes=[process],
            )

    def _start_data_node(self, port: int, replica_of: int | None) -> None:
        directory = self.directory / f"redis-{port}"
        directory.mkdir(exist_ok=True)
        argv = [
            "redis-server", "--port", str(port), "--bind", LOOPBACK, "--dir", str(directory),
            "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0",
            "--logfile", str(directory / "redis.log"),
        ]  # fmt: skip
        if replica_of is not None:
            argv += ["--replicaof", LOOPBACK, str(replica_of)]
        self.processes[port] = ChildProcess(argv, name=f"redis-server {port}", log_path=directory / "stdout.log")

    def _start_sentinel(self, port: int, master_port: int) -> None:
        directory = self.directory / f"sentinel-{port}"
        directory.mkdir()
        config = directory / "sentinel.conf"
        name = self.master_name
        config.write_text(
            "\n".join(
                [
                    f"port {port}",
                    f"bind {LOOPBACK}",
                    f"dir {directory}",
                    f"logfile {directory / 'sentinel.log'}",
                    f"sentinel monitor {name} {LOOPBACK} {master_port} 2",
                    f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
                    f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
                    f"sentinel parallel-syncs {name} 1",
                ]
            )
            + "\n"
        )
        self.processes[port] = ChildProcess(
            ["redis-server", str(config), "--sentinel"],
            name=f"redis sentinel {port}",
            log_path=directory / "stdout.log",
        )

    def _sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=port, socket_timeout=2, decode_responses=True)

    def _ready(self) -> bool:
        for port in self.sentinel_ports:
            with self._sentinel(port) as sentinel:
                master = sentinel.execute_command("SENTINEL", "MASTER", self.master_name)
                # redis-py parses SENTINEL MASTER into a dict with int values for the counters
                if int(master.get("num-other-sentinels", 0)) < 2:
                    return False
        return self._replicas_synced(self.initial_master[1]) and self._sentinels_see_replicas()

    def _sentinels_see_replicas(self) -> bool:
        # A failover only promotes a replica the sentinels know and believe healthy; they learn about a
        # replica from the master's INFO (every 10 s), so a restarted one must be waited for.
        expected = {port for port in self.data_ports if port in self.processes} - {self.master_address()[1]}
        for port in self.sentinel_ports:
            with self._sentinel(port) as sentinel:
                replicas = sentinel.execute_command("SENTINEL", "REPLICAS", self.master_name)
            healthy = {
                int(replica["port"])
                for replica in replicas
                if replica.get("flags") == "slave" and replica.get("master-link-status") == "ok"
            }
            if not expected <= healthy:
                return False
        return True

    def _replicas_synced(self, master_port: int) -> bool:
        for port in self.data_ports:
            if port == master_port or port not in self.processes:
                continue
            with redis.Redis(host=LOOPBACK, port=port, socket_timeout=2) as node:
                info = node.info("replication")
            if info.get("role") != "slave" or info.get("master_link_status") != "up":
                return False
            if int(info.get("master_port", 0)) != master_port:
                return False
        return True

    @property
    def sentinel_addresses(self) -> list[Address]:
        return [(LOOPBACK, port) for port in self.sentinel_ports]

    @property
    def url(self) -> str:
        """The sentinels in Celery/kombu's URL form, database 0."""
        return ";".join(f"sentinel://{host}:{port}" for host, port in self.sentinel_addresses) + "/0"

    @property
    def transport_options(self) -> dict[str, str]:
        """What kombu and Celery need with ``url``: ``broker_transport_options`` and
        ``result_backend_transport_options``."""
        return {"master_name": self.master_name}

    def master_address(self, sentinel_port: int | None = None) -> Address:
        """The master as one sentinel (by default the first running one) names it."""
        port = sentinel_port or next(p for p in self.sentinel_ports if p in self.processes)
        with self._sentinel(port) as sentinel:
            host, master_port = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return str(host), int(master_port)

    def kill_master(self) -> Address:
        """SIGKILL the current master's redis-server; returns its address."""
        host, port = self.master_address()
        process = self.processes.pop(port, None)
        if process is None:
            raise ServiceError(f"the master {host}:{port} is not a redis-server of this group")
        process.kill()
        return host, port

    def wait_for_failover(self, timeout_s: float = 30.0) -> Address:
        """Wait until at least 2 sentinels name a new master that is running and says role:master.

        Returns its address; raises ServiceError (with the first sentinel's log) after ``timeout_s``.
        """
        old = [port for port in self.data_ports if port not in self.processes]
        found: list[Address] = []

        def promoted() -> bool:
            votes: dict[Address, int] = {}
            for port in self.sentinel_ports:
                address = self.master_address(port)
                votes[address] = votes.get(address, 0) + 1
            for address, count in votes.items():
                if count >= 2 and address[1] not in old and address[1] in self.processes:
                    with redis.Redis(host=address[0], port=address[1], socket_timeout=2) as node:
                        if node.info("replication").get("role") == "master":
                            found.append(address)
                            return True
            return False

        wait_until(
            promoted,
            what=f"the sentinels to promote a new master for {self.master_name}",
            timeout_s=timeout_s,
            interval_s=0.05,
            log=self.directory / f"sentinel-{self.sentinel_ports[0]}" / "sentinel.log",
        )
        return found[-1]

    def restart(self, port: int, timeout_s: float = 30.0) -> None:
        """Start a killed redis-server again as a replica of the current master; wait until it can be promoted.

        Started as a master, it would be empty (no persistence) until a sentinel converts it, which takes
        about 10 s (the sentinels' INFO period). Raises ServiceError after ``timeout_s``.
        """
        if port not in self.data_ports or port in self.processes:
            raise ServiceError(f"port {port} is not a stopped redis-server of this group")
        self._start_data_node(port, replica_of=self.master_address()[1])
        wait_until(
            lambda: self._replicas_synced(self.master_address()[1]) and self._sentinels_see_replicas(),
            what=f"redis-server {port} to restart as a synced replica that every sentinel sees as healthy",
            timeout_s=timeout_s,
            processes=[self.processes[port]],
        )

    def close(self) -> None:
        """Kill every process of the group and remove its directories."""
        for process in self.processes.values():
            process.kill()
        self.processes.clear()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisSentinel:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
