"""A private Redis Cluster for the tests: N masters (and optional replicas) on free loopback ports.

Each node is a ``redis-server --cluster-enabled yes`` in a directory of its own. Its cluster bus port is set
explicitly (``cluster-port``, Redis 7) to a port chosen free like the client port: the default, port + 10000,
may be taken or beyond 65535. ``redis-cli --cluster create ... --cluster-yes`` assigns the slots; the cluster
is ready when every node reports ``cluster_state:ok``, knows every other node and agrees on who owns every
slot, and every replica's link to its master is up: 2.0 s for three masters, 3.0 s with a replica each
(``redis-cli --cluster create`` sleeps a second at a time while the nodes join). Replicas sync at once
(``repl-diskless-sync-delay 0``) and may always fail over (``cluster-replica-validity-factor 0``); with the
default ``cluster-node-timeout`` of 2000 ms here, a killed master's replica takes over in 3.9-4.9 s.

``reshard`` moves slots with ``redis-cli --cluster reshard``, which migrates them one by one (``CLUSTER
SETSLOT ... IMPORTING/MIGRATING``, ``MIGRATE`` in pipelines, ``SETSLOT ... NODE``): a cluster client keeps
working during it by following ``ASK`` and ``MOVED`` redirections (tested with redis-py under live traffic).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import redis

from tests.services.processes import LOOPBACK, ChildProcess, ServiceError, free_ports, port_open, run, wait_until

SLOTS = 16384


@dataclass(frozen=True)
class ClusterNode:
    """One line of ``CLUSTER NODES``: a node as the cluster sees it."""

    id: str
    host: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]  # inclusive ranges
    connected: bool

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def slot_count(self) -> int:
        return sum(last - first + 1 for first, last in self.slots)

    @property
    def failed(self) -> bool:
        return "fail" in self.flags or "fail?" in self.flags


def parse_cluster_nodes(text: str) -> list[ClusterNode]:
    """Parse the output of ``CLUSTER NODES`` (importing/migrating markers like ``[5->-id]`` are skipped)."""
    nodes = []
    for line in text.strip().splitlines():
        fields = line.split()
        address = fields[1].split("@")[0]
        host, _, port = address.rpartition(":")
        slots = []
        for item in fields[8:]:
            if item.startswith("["):
                continue
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        nodes.append(
            ClusterNode(
                id=fields[0],
                host=host,
                port=int(port),
                flags=frozenset(fields[2].split(",")) - {"myself"},
                master_id=None if fields[3] == "-" else fields[3],
                slots=tuple(sorted(slots)),
                connected=fields[7] == "connected",
            )
        )
    return sorted(nodes, key=lambda node: node.port)


class RedisCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each; ``close()`` removes everything.

    ``startup_nodes`` lists every node as (host, port); ``url`` is one node's ``redis://`` URL, enough for a
    cluster client to discover the rest. Raises ServiceError when redis-server or redis-cli is missing or
    the cluster is not ready within ``start_timeout_s``.
    """

    def __init__(
        self,
        masters: int = 3,
        *,
        replicas: int = 0,
        node_timeout_ms: int = 2000,
        appendonly: bool = False,
        start_timeout_s: float = 30.0,
    ) -> None:
        if masters < 3:
            raise ServiceError(f"a Redis Cluster needs at least 3 masters (redis-cli --cluster create); got {masters}")
        for tool in ("redis-server", "redis-cli"):
            if shutil.which(tool) is None:
                raise ServiceError(f"{tool} is not installed: apt-get install redis-server (or redis-tools)")
        self.directory = Path(tempfile.mkdtemp(prefix="s3batch-redis-cluster-"))
        self.node_timeout_ms = node_timeout_ms
        self.appendonly = appendonly
        count = masters * (1 + replicas)
        both = free_ports(2 * count)
        self.ports = both[:count]
        self.bus_ports = dict(zip(self.ports, both[count:], strict=True))
        self.processes: dict[int, ChildProcess] = {}
        started = time.monotonic()
        try:
            for port in self.ports:
                self._start_node(port)
            for port in self.ports:
                wait_until(
                    functools.partial(port_open, port),
                    what=f"redis-server (cluster node) on port {port}",
                    timeout_s=start_timeout_s,
                    processes=[self.processes[port]],
                )
            run(
                ["redis-cli", "--cluster", "create", *(f"{LOOPBACK}:{p}" for p in self.ports),
                 "--cluster-replicas", str(replicas), "--cluster-yes"],
                what="redis-cli --cluster create",
                timeout_s=start_timeout_s,
            )  # fmt: skip
            self.wait_until_stable(timeout_s=start_timeout_s)
        except BaseException:
            self.close()
            raise
        self.startup_s = time.monotonic() - started

    def _start_node(self, port: int) -> None:
        directory = self.directory / str(port)
        directory.mkdir(exist_ok=True)
        argv = [
            "redis-server", "--port", str(port), "--bind", LOOPBACK, "--dir", str(directory),
            "--cluster-enabled", "yes", "--cluster-port", str(self.bus_ports[port]),
            "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(self.node_timeout_ms),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            # replicas sync at once (the default waits 5 s for more replicas) and may always fail over
            "--repl-diskless-sync-delay", "0", "--cluster-replica-validity-factor", "0",
            "--logfile", str(directory / "redis.log"),
        ]  # fmt: skip
        self.processes[port] = ChildProcess(
            argv, name=f"redis-server (cluster node {port})", log_path=directory / "stdout.log"
        )

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """Every node's (host, port) that is running now."""
        return [(LOOPBACK, port) for port in self.ports if self.processes.get(port) is not None]

    @property
    def url(self) -> str:
        """``redis://`` URL of a running node (a cluster client discovers the others from it)."""
        host, port = self.startup_nodes[0]
        return f"redis://{host}:{port}/0"

    def client(self, port: int) -> redis.Redis:
        """A plain (non-cluster) client of one node, for CLUSTER commands."""
        return redis.Redis(host=LOOPBACK, port=port, socket_timeout=5, decode_responses=True)

    def nodes(self, port: int | None = None) -> list[ClusterNode]:
        """The cluster as ``port`` (by default the first running node) sees it."""
        port = port if port is not None else self.startup_nodes[0][1]
        with self.client(port) as client:
            return parse_cluster_nodes(str(client.execute_command("CLUSTER", "NODES")))

    def masters(self) -> list[ClusterNode]:
        """The masters that own slots, as the first running node sees them."""
        return [node for node in self.nodes() if node.is_master and node.slots and not node.failed]

    def _node(self, node: ClusterNode | int) -> ClusterNode:
        port = node if isinstance(node, int) else node.port
        for candidate in self.nodes():
            if candidate.port == port:
                return candidate
        raise ServiceError(f"no cluster node on port {port}")

    def _stable(self) -> bool:
        views = []
        for _, port in self.startup_nodes:
            with self.client(port) as client:
                info = str(client.execute_command("CLUSTER", "INFO"))
                if "cluster_state:ok" not in info:
                    return False
                nodes = parse_cluster_nodes(str(client.execute_command("CLUSTER", "NODES")))
            if any(not node.connected for node in nodes if node.port in self.processes) or len(nodes) != len(
                self.ports
            ):
                return False
            owners = {(node.port, node.slots) for node in nodes if node.is_master and not node.failed}
            if any(port not in self.processes for port, slots in owners if slots):
                return False  # a master we killed still owns slots: its failure is not detected yet
            if sum(node.slot_count for node in nodes if node.is_master and not node.failed) != SLOTS:
                return False
            replicas = {(node.port, node.master_id) for node in nodes if not node.is_master}
            if not all(self._replica_synced(port) for port, _ in replicas if port in self.processes):
                return False
            views.append((frozenset(owners), frozenset(replicas)))
        return len(set(views)) == 1

    def _replica_synced(self, port: int) -> bool:
        with self.client(port) as client:
            return bool(client.info("replication").get("master_link_status") == "up")

    def wait_until_stable(self, timeout_s: float = 30.0) -> float:
        """Wait until every running node says ``cluster_state:ok`` and all agree on slots and roles.

        Returns the seconds it took; raises ServiceError (with the first node's log) after ``timeout_s``.
        """
        first = self.startup_nodes[0][1]
        return wait_until(
            self._stable,
            what="every Redis Cluster node to report cluster_state:ok and agree on the slot owners",
            timeout_s=timeout_s,
            log=self.directory / str(first) / "redis.log",
        )

    def reshard(self, slots: int, from_node: ClusterNode | int, to_node: ClusterNode | int) -> None:
        """Move ``slots`` slots (with their keys) from one master to another, then wait until all agree.

        Nodes are ClusterNode objects or ports. Safe under live traffic: clients follow ASK/MOVED.
        Raises ServiceError with redis-cli's output when the move fails.
        """
        source, target = self._node(from_node), self._node(to_node)
        run(
            ["redis-cli", "--cluster", "reshard", target.address, "--cluster-from", source.id,
             "--cluster-to", target.id, "--cluster-slots", str(slots), "--cluster-yes",
             "--cluster-pipeline", "100", "--cluster-timeout", "5000"],
            what=f"moving {slots} slots from {source.address} to {target.address}",
            timeout_s=120,
        )  # fmt: skip
        self.wait_until_stable()

    def kill(self, node: ClusterNode | int) -> None:
        """SIGKILL one node (a crash); ``restart`` brings it back with the same port and nodes.conf."""
        port = node if isinstance(node, int) else node.port
        process = self.processes.pop(port, None)
        if process is None:
            raise ServiceError(f"no running cluster node of ours on port {port}")
        process.kill()

    def restart(self, port: int) -> None:
        """Start a killed node again on its port; it rejoins the cluster from its nodes.conf."""
        if port not in self.ports or port in self.processes:
            raise ServiceError(f"port {port} is not a stopped node of this cluster")
        self._start_node(port)
        wait_until(
            lambda: port_open(port), what=f"cluster node {port} to restart", timeout_s=10,
            processes=[self.processes[port]],
        )  # fmt: skip

    def close(self) -> None:
        """Kill every node (data is disposable) and remove the directories."""
        for process in self.processes.values():
            process.kill()
        self.processes.clear()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisCluster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
