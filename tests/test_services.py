"""Self-tests of tests/services/: each service starts, does its basic job, and leaves nothing behind.

"Nothing behind" is checked from /proc: no process of ours still runs (by PID, and no process mentions the
service's temporary directory), and no namespace, vhost or directory remains.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import amqp
import kombu
import pytest
import redis
from redis.cluster import ClusterNode as RedisClusterNode
from redis.cluster import RedisCluster as RedisClusterClient
from redis.sentinel import Sentinel

from tests.services import s3probe
from tests.services.faketime import faketime_available, faketime_env
from tests.services.netns import NetnsHosts, leftover_namespaces, netns_available
from tests.services.processes import ChildProcess, ServiceError, free_ports, port_open
from tests.services.rabbit import RabbitMQ, RabbitMQNode, list_vhosts, rabbitmq_available
from tests.services.rediscluster import RedisCluster
from tests.services.seaweed import SeaweedFS
from tests.services.sentinel import RedisSentinel

if TYPE_CHECKING:
    from batcher.embedded import S3Server

pytestmark = pytest.mark.services
# (redis-py leaves ClusterNode, Sentinel and master_for unannotated: their calls carry a type: ignore)

# What s3batch relies on (DESIGN.md: exact bytes, never overwritten); every S3 server we test with must pass.
ESSENTIAL_S3 = tuple(
    (feature, check)
    for feature, check in s3probe.CHECKS
    if check in (s3probe.check_put_if_none_match, s3probe.check_multipart_if_none_match, s3probe.check_ranged_get)
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _mentioning(text: str) -> list[int]:
    """PIDs of live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and _alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def assert_gone(pids: Iterable[int], directory: Path) -> None:
    assert [pid for pid in pids if _alive(pid)] == []
    assert _mentioning(str(directory)) == []
    assert not directory.exists()


def test_child_process_stop_ends_its_whole_group_and_nothing_else(tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "60"])  # same command as the children: must survive
    child = ChildProcess(["sh", "-c", "trap '' TERM; sleep 60 & sleep 60 & wait"], name="sh", log_path=tmp_path / "log")
    try:
        time.sleep(0.2)
        members = [pid for pid in _mentioning("sleep 60") if pid != child.pid and os.getpgid(pid) == child.pid]
        assert len(members) == 2
        started = time.monotonic()
        child.stop(timeout_s=0.5)  # the shell ignores SIGTERM: SIGKILL follows
        assert time.monotonic() - started < 3
        time.sleep(0.1)
        assert [pid for pid in members if _alive(pid)] == []
        assert bystander.poll() is None
    finally:
        child.kill()
        bystander.kill()
        bystander.wait()


def test_free_ports_pairs_are_free_and_distinct() -> None:
    ports = free_ports(6, paired_offset=10000)
    assert len(set(ports) | {p + 10000 for p in ports}) == 12
    for port in ports:
        for candidate in (port, port + 10000):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", candidate))


def test_moto_server_passes_the_essential_s3_checks(s3_server: S3Server) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server.endpoint_url)
    try:
        findings = s3probe.probe(client, checks=ESSENTIAL_S3)
    finally:
        client.close()
    assert [f for f in findings if not f.like_aws] == []


def test_seaweedfs_starts_passes_the_essential_s3_checks_and_cleans_up() -> None:
    with SeaweedFS() as seaweed:
        client = seaweed.client()
        try:
            findings = s3probe.probe(client, checks=ESSENTIAL_S3)
            assert seaweed.env()["AWS_ENDPOINT_URL_S3"] == seaweed.endpoint_url
        finally:
            client.close()
        assert seaweed.process is not None
        pid, directory, ports = seaweed.process.pid, seaweed.directory, seaweed.ports
    assert [f for f in findings if not f.like_aws] == []
    assert_gone([pid], directory)
    assert not Path(f"/tmp/seaweedfs-s3-grpc-{ports['s3.grpc']}.sock").exists()


def test_crc_functions_match_the_standard_check_values() -> None:
    assert s3probe.crc32c(b"123456789") == 0xE3069283
    assert s3probe.crc64nvme(b"123456789") == 0xAE8B14860A799888


@pytest.mark.skipif(rabbitmq_available() is not None, reason=str(rabbitmq_available()))
def test_rabbitmq_vhost_carries_messages_and_is_deleted() -> None:
    with RabbitMQ() as rabbit:
        assert rabbit.vhost in list_vhosts()
        connection = amqp.Connection(host="127.0.0.1:5672", userid="guest", password="guest", virtual_host=rabbit.vhost)
        connection.connect()
        try:
            channel = connection.channel()
            channel.queue_declare("q", auto_delete=False)
            channel.basic_publish(amqp.Message(b"hello"), routing_key="q")
            message = channel.basic_get("q", no_ack=True)
            assert message is not None and message.body == b"hello"
        finally:
            connection.close()
        vhost = rabbit.vhost
    assert vhost not in list_vhosts()


@pytest.mark.skipif(rabbitmq_available() is not None, reason=str(rabbitmq_available()))
def test_private_rabbitmq_node_returns_a_hung_consumers_message_after_consumer_timeout() -> None:
    # consumer_timeout is per node on 3.10; the channel tick (60 s by default) sets how soon it is checked.
    with RabbitMQNode(settings={"consumer_timeout": "1000"}, rabbit_env={"channel_tick_interval": "100"}) as node:
        connection = amqp.Connection(host=f"127.0.0.1:{node.amqp_port}", userid="guest", password="guest")
        connection.connect()
        received: list[float] = []
        try:
            channel = connection.channel()
            channel.queue_declare("work", auto_delete=False)
            channel.basic_publish(amqp.Message(b"job"), routing_key="work")
            channel.basic_qos(0, 1, False)
            channel.basic_consume("work", callback=lambda message: received.append(time.monotonic()))
            with pytest.raises(amqp.exceptions.PreconditionFailed, match="delivery acknowledgement"):
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:  # never acknowledges: a hung consumer
                    with contextlib.suppress(TimeoutError):
                        connection.drain_events(timeout=0.1)
            assert received and time.monotonic() - received[0] < 3
        finally:
            connection.close()
        other = amqp.Connection(host=f"127.0.0.1:{node.amqp_port}", userid="guest", password="guest")
        other.connect()
        try:
            message = other.channel().basic_get("work", no_ack=True)
            assert message is not None and message.body == b"job"
        finally:
            other.close()
        pids, directory = [p.pid for p in node.processes], node.directory
    assert_gone(pids, directory)


def test_redis_cluster_reshards_under_live_traffic_and_cleans_up() -> None:
    with RedisCluster(masters=3) as cluster:
        assert sum(node.slot_count for node in cluster.masters()) == 16384
        client = RedisClusterClient(
            startup_nodes=[RedisClusterNode(host, port) for host, port in cluster.startup_nodes]  # type: ignore[no-untyped-call]
        )
        errors: list[str] = []
        stop = threading.Event()

        def traffic() -> None:
            index = 0
            while not stop.is_set():
                key = f"live:{index}"
                try:
                    client.set(key, index)
                    if client.get(key) != str(index).encode():
                        errors.append(f"{key} read back wrong")
                except redis.RedisError as exc:
                    errors.append(repr(exc))
                index += 1

        for index in range(2000):
            client.set(f"before:{index}", index)
        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            source, target = cluster.masters()[:2]
            cluster.reshard(1000, source, target)
        finally:
            stop.set()
            worker.join()
        assert errors == []
        assert {node.port: node.slot_count for node in cluster.masters()}[target.port] == target.slot_count + 1000
        assert all(client.get(f"before:{index}") == str(index).encode() for index in range(2000))
        client.close()
        victim = cluster.masters()[2]
        cluster.kill(victim)
        assert not port_open(victim.port)
        pids, directory = [p.pid for p in cluster.processes.values()], cluster.directory
    assert_gone(pids, directory)


def test_redis_sentinel_fails_over_after_kill_master() -> None:
    with RedisSentinel() as group:
        assert group.url.count("sentinel://") == 3 and group.url.endswith("/0")
        with kombu.Connection(group.url, transport_options=group.transport_options) as connection:
            queue = connection.SimpleQueue("through-sentinel")
            queue.put({"n": 1})
            message = queue.get(timeout=5)
            message.ack()
            queue.close()
            assert message.payload == {"n": 1}
        sentinel = Sentinel(group.sentinel_addresses, socket_timeout=1)  # type: ignore[no-untyped-call]
        master = sentinel.master_for(group.master_name, socket_timeout=1)  # type: ignore[no-untyped-call]
        master.set("kept", "yes")
        master.execute_command("WAIT", 1, 2000)  # the replica has it before the master dies
        master.close()
        old = group.kill_master()
        started = time.monotonic()
        new = group.wait_for_failover(timeout_s=30)
        assert new != old and time.monotonic() - started < 15
        promoted = sentinel.master_for(group.master_name, socket_timeout=1)  # type: ignore[no-untyped-call]
        assert promoted.get("kept") == b"yes"
        promoted.close()
        for node in sentinel.sentinels:
            node.close()
        pids, directory = [p.pid for p in group.processes.values()], group.directory
    assert_gone(pids, directory)


@pytest.mark.skipif(netns_available() is not None, reason=f"network namespaces: {netns_available()}")
def test_netns_hosts_reach_each_other_hang_when_cut_and_vanish_on_close() -> None:
    probe_connect = (
        "import socket, sys\n"
        "try:\n"
        "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close(); print('connected')\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    with NetnsHosts(("client", "server"), gateway=True) as hosts:
        server = hosts.address("server")
        redis_server = hosts.popen(
            "server", ["redis-server", "--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", ""]
        )
        moto = hosts.popen("server", [sys.executable, "-m", "moto.server", "-H", "0.0.0.0", "-p", "5000"])
        deadline = time.monotonic() + 20
        while not (port_open(6379, server) and port_open(5000, server)):  # through the gateway
            assert time.monotonic() < deadline, "redis-server and moto did not start in the namespace"
            time.sleep(0.05)
        assert hosts.run("client", ["redis-cli", "-h", server, "ping"]).stdout.strip() == "PONG"
        http = hosts.run(
            "client",
            [
                sys.executable,
                "-c",
                f"import urllib.request as u; print(u.build_opener(u.ProxyHandler({{}})).open('http://{server}:5000/').status)",
            ],
        )
        assert http.stdout.strip() == "200", http.stderr
        hosts.cut("server")
        assert (
            hosts.run("client", [sys.executable, "-c", probe_connect, server, "6379"]).stdout.strip() == "TimeoutError"
        )
        client = hosts.address("client")
        assert hosts.run("server", [sys.executable, "-c", probe_connect, client, "9"]).stdout.strip() == "TimeoutError"
        hosts.restore("server")
        assert hosts.run("client", ["redis-cli", "-h", server, "ping"]).stdout.strip() == "PONG"
        pids, prefix, directory = [redis_server.pid, moto.pid], hosts.prefix, hosts.directory
    assert [pid for pid in pids if _alive(pid)] == []
    assert leftover_namespaces(prefix) == []
    assert not directory.exists()


@pytest.mark.skipif(faketime_available() is not None, reason=str(faketime_available()))
def test_faketime_shifts_a_python_subprocess_wall_clock_but_not_its_timed_waits() -> None:
    code = "import threading, time; threading.Event().wait(0.2); print(time.time())"
    env = {**os.environ, **faketime_env("+5m")}
    before = time.time()
    shifted = float(
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=20).stdout
    )
    assert 299 < shifted - before < 320
    with pytest.raises(ServiceError, match="offset"):
        faketime_env("5 minutes")


@pytest.mark.skipif(
    faketime_available() is not None or netns_available() is not None,
    reason=f"faketime: {faketime_available()}; network namespaces: {netns_available()}",
)
def test_faketime_works_through_ip_netns_exec() -> None:
    with NetnsHosts(("worker",)) as hosts:
        env = {**os.environ, **faketime_env("-90s")}
        before = time.time()
        done = hosts.run("worker", [sys.executable, "-c", "import time; print(time.time())"], env=env)
        assert -100 < float(done.stdout) - before < -80


def test_services_refuse_what_they_cannot_do() -> None:
    with pytest.raises(ServiceError, match="at least 3 masters"):
        RedisCluster(masters=2)
    if netns_available() is None:
        with pytest.raises(ServiceError, match="host names"):
            NetnsHosts(("Bad Name",))
