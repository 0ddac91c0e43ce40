"""Hosts of their own for the tests, made of Linux network namespaces, whose links a test can cut.

``NetnsHosts(("worker", "redis"))`` makes one namespace per host plus a "switch" namespace holding a bridge;
each host has ``lo`` up and an ``eth0`` (10.77.N.x/24) on a veth pair whose other end is a port of the bridge.
Nothing is added to the caller's namespace unless ``gateway=True``, which links it to the bridge too (an
interface ``s3bg…`` with 10.77.N.254, N chosen unused) so that the test process can reach the hosts.

``cut(host)`` sets the host's bridge port down: its packets are silently dropped in both directions, so TCP
hangs (established connections and new ``connect()`` calls time out) instead of failing fast. Two details
make that so: the cut is on the switch side (setting the host's own ``eth0`` down removes its route, and its
connects fail at once with ENETUNREACH), and every host knows every other's MAC address permanently (an
expired ARP entry turns a hang into EHOSTUNREACH after about a second). ``tc netem`` is not used: the
``netem`` qdisc is missing from many CI kernels (including this one). ``restore(host)`` sets the port up;
hung connections resume with TCP's next retransmission.

Names start with a prefix unique to the instance (``s3b<pid><random>``), so parallel runs never clash, and
``close()`` kills the processes started in the hosts and deletes every namespace and interface it made.
``netns_available()`` says why namespaces cannot be made here, for ``pytest.skip``.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from tests.services.processes import ChildProcess, ServiceError

_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")  # bridge port "to-<name>" must fit in 15 characters
_CAP_NET_ADMIN, _CAP_SYS_ADMIN = 12, 21


def _ip_binary() -> str | None:
    return shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")


def _ip(*arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    binary = _ip_binary()
    if binary is None:
        raise ServiceError("the `ip` command is missing: apt-get install iproute2")
    done = subprocess.run([binary, *arguments], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise ServiceError(f"`ip {' '.join(arguments)}` failed: {done.stderr.strip() or done.stdout.strip()}")
    return done


@functools.cache
def netns_available() -> str | None:
    """None when this process can make network namespaces, veth pairs and bridges; otherwise the reason."""
    if _ip_binary() is None:
        return "the `ip` command is missing (Debian package iproute2)"
    if os.geteuid() != 0:
        effective = 0
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                effective = int(line.split()[1], 16)
        missing = [
            name
            for name, bit in (("CAP_SYS_ADMIN", _CAP_SYS_ADMIN), ("CAP_NET_ADMIN", _CAP_NET_ADMIN))
            if not effective >> bit & 1
        ]
        if missing:
            return f"not root and without {' and '.join(missing)}: network namespaces need both (run as root)"
    probe = f"s3bcheck{os.getpid()}{uuid.uuid4().hex[:6]}"
    added = _ip("netns", "add", probe, check=False)
    if added.returncode != 0:
        return f"`ip netns add` failed: {added.stderr.strip()}"
    try:
        for arguments in (
            ("-n", probe, "link", "add", "br0", "type", "bridge"),
            ("-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1"),
        ):
            done = _ip(*arguments, check=False)
            if done.returncode != 0:
                return f"`ip {' '.join(arguments)}` failed: {done.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


class NetnsHosts:
    """Hosts named ``names``, each in a network namespace of its own on one private bridge.

    ``address(name)`` is a host's IPv4 address, ``popen``/``run`` start a command inside a host, ``cut`` and
    ``restore`` take its link down and up. Raises ServiceError (with the reason) when namespaces cannot be
    made; check ``netns_available()`` first to skip instead.
    """

    def __init__(self, names: Sequence[str] = ("a", "b"), *, gateway: bool = False) -> None:
        reason = netns_available()
        if reason is not None:
            raise ServiceError(f"cannot make network namespaces: {reason}")
        bad = [name for name in names if not _NAME.match(name)]
        if bad or len(set(names)) != len(names) or not 1 <= len(names) <= 200:
            raise ServiceError(f"host names must be 1-200 distinct [a-z][a-z0-9]{{0,11}}; got {list(names)}")
        self.prefix = f"s3b{os.getpid()}{uuid.uuid4().hex[:6]}"
        self.switch = f"{self.prefix}-sw"
        self.names = list(names)
        self.directory = Path(tempfile.mkdtemp(prefix="s3batch-netns-"))
        self.gateway_interface: str | None = None
        self._namespaces: list[str] = []
        self._processes: list[ChildProcess] = []
        self.network = self._choose_network(gateway)
        hosts = list(self.network.hosts())
        self._addresses = {name: str(hosts[index]) for index, name in enumerate(self.names)}
        self.gateway_address: str | None = str(hosts[-1]) if gateway else None
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _choose_network(gateway: bool) -> ipaddress.IPv4Network:
        if not gateway:
            # Private to this instance's bridge: parallel runs may all use it.
            return ipaddress.IPv4Network("10.77.0.0/24")
        # Visible from the caller's namespace: take a 10.77.N.0/24 that no route there uses yet.
        routes = _ip("-4", "route", "show", "table", "all").stdout
        used = {int(match) for match in re.findall(r"\b10\.77\.(\d+)\.", routes)}
        free = [third for third in range(1, 255) if third not in used]
        if not free:
            raise ServiceError("no free 10.77.N.0/24 network for the gateway: every one is routed already")
        third = free[int.from_bytes(os.urandom(2), "big") % len(free)]
        return ipaddress.IPv4Network(f"10.77.{third}.0/24")

    def namespace(self, name: str) -> str:
        """The network namespace of host ``name`` (for ``ip netns exec``)."""
        if name not in self._addresses:
            raise ServiceError(f"no host {name!r} here; hosts are {self.names}")
        return f"{self.prefix}-{name}"

    def address(self, name: str) -> str:
        """Host ``name``'s IPv4 address."""
        self.namespace(name)
        return self._addresses[name]

    def _add_namespace(self, namespace: str) -> None:
        _ip("netns", "add", namespace)
        self._namespaces.append(namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")

    def _mac(self, namespace: str | None, interface: str) -> str:
        arguments = ("-j", "link", "show", interface)
        output = _ip(*(("-n", namespace, *arguments) if namespace else arguments)).stdout
        return str(json.loads(output)[0]["address"])

    def _build(self) -> None:
        prefix_length = str(self.network.prefixlen)
        self._add_namespace(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        macs: dict[str, str] = {}
        for name in self.names:
            namespace = self.namespace(name)
            self._add_namespace(namespace)
            port = f"to-{name}"
            _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            _ip("-n", namespace, "addr", "add", f"{self._addresses[name]}/{prefix_length}", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            macs[self._addresses[name]] = self._mac(namespace, "eth0")
        if self.gateway_address is not None:
            interface = f"s3bg{uuid.uuid4().hex[:8]}"
            _ip("link", "add", interface, "type", "veth", "peer", "name", "to-gateway", "netns", self.switch)
            self.gateway_interface = interface
            _ip("-n", self.switch, "link", "set", "to-gateway", "master", "br0", "up")
            _ip("addr", "add", f"{self.gateway_address}/{prefix_length}", "dev", interface)
            _ip("link", "set", interface, "up")
            macs[self.gateway_address] = self._mac(None, interface)
            route = _ip("route", "get", self._addresses[self.names[0]]).stdout
            if f"dev {interface} " not in route:
                raise ServiceError(f"the route to the hosts does not use {interface} but: {route.strip()}")
        # Permanent neighbours: with no ARP to fail, a cut link drops packets (TCP hangs) instead of EHOSTUNREACH.
        for name in self.names:
            for address, mac in macs.items():
                if address != self._addresses[name]:
                    _ip("-n", self.namespace(name), "neigh", "replace", address, "lladdr", mac,
                        "dev", "eth0", "nud", "permanent")  # fmt: skip
        if self.gateway_interface is not None:
            for name in self.names:
                address = self._addresses[name]
                _ip("neigh", "replace", address, "lladdr", macs[address], "dev", self.gateway_interface,
                    "nud", "permanent")  # fmt: skip

    def command(self, name: str, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside host ``name`` (``ip netns exec <namespace> ...``)."""
        binary = _ip_binary() or "ip"
        return [binary, "netns", "exec", self.namespace(name), *argv]

    def popen(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        label: str | None = None,
    ) -> ChildProcess:
        """Start ``argv`` in host ``name`` (in a process group of its own); ``close()`` kills it.

        ``env`` is the whole environment of the command (default: this process's); its output goes to
        ``log_path`` (default: a file in this instance's directory).
        """
        label = label or f"{argv[0]} on {name}"
        path = log_path or self.directory / f"{name}-{len(self._processes)}.log"
        process = ChildProcess(self.command(name, argv), name=label, log_path=path, env=env)
        self._processes.append(process)
        return process

    def run(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout_s: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command in host ``name`` and return it finished (output captured, not checked)."""
        return subprocess.run(
            self.command(name, argv),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
        )

    def cut(self, name: str) -> None:
        """Take host ``name``'s link down at the bridge: its traffic is dropped both ways and TCP hangs."""
        self.namespace(name)  # checks the name
        _ip("-n", self.switch, "link", "set", f"to-{name}", "down")

    def restore(self, name: str) -> None:
        """Bring host ``name``'s link back up."""
        self.namespace(name)
        _ip("-n", self.switch, "link", "set", f"to-{name}", "up")

    def close(self) -> None:
        """Kill the processes started in the hosts, then delete the namespaces and the gateway interface.

        A namespace lives on, nameless, while a process is in it, so the processes go first.
        """
        for process in self._processes:
            process.kill()
        self._processes.clear()
        if self.gateway_interface is not None:
            _ip("link", "del", self.gateway_interface, check=False)
            self.gateway_interface = None
        for namespace in reversed(self._namespaces):
            _ip("netns", "del", namespace, check=False)
        self._namespaces.clear()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> NetnsHosts:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def leftover_namespaces(prefix: str = "s3b") -> list[str]:
    """Namespaces whose name starts with ``prefix`` (to check that tests leave none behind)."""
    output = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in output.splitlines() if line.startswith(prefix)]
