"""The plumbing every test service shares: free loopback ports, bounded waits, and child processes.

Tests never mock a service; they start a real one on ports nobody else uses and stop exactly the processes
they started. Three rules keep parallel runs and other people's services safe:

- ports come from the kernel (bind to port 0) and are never handed out twice by this process;
- every child runs in a session of its own, so that it and anything it forks form one process group that is
  signalled by its id (never ``pkill`` by name: a developer's own redis-server must survive our tests);
- every wait is bounded and, when it fails, says which service, what it waited for, and the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"

# Ports given out by this process; binding to port 0 twice may return the same port when nobody listens yet.
_handed_out: set[int] = set()


class ServiceError(Exception):
    """Raised when a test service cannot start, does not become ready in time, or cannot be cleaned up."""


def free_ports(count: int, *, paired_offset: int | None = None, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct free TCP ports on ``host``; with ``paired_offset``, ``port + paired_offset`` is free too.

    The pairing exists for servers that derive a second port (Redis Cluster's bus port, SeaweedFS's gRPC
    ports are ``port + 10000`` by default). Raises ServiceError when no such ports are found in 200 tries.
    """
    held: list[socket.socket] = []
    chosen: list[int] = []
    try:
        for _ in range(200):
            if len(chosen) == count:
                return chosen
            sock = socket.socket()
            sock.bind((host, 0))
            held.append(sock)
            port = int(sock.getsockname()[1])
            if port in _handed_out or port in chosen:
                continue
            if paired_offset is not None:
                partner = port + paired_offset
                if partner > 65535 or partner in _handed_out or partner in chosen:
                    continue
                partner_sock = socket.socket()
                try:
                    partner_sock.bind((host, partner))
                except OSError:
                    partner_sock.close()
                    continue
                held.append(partner_sock)
                _handed_out.add(partner)
            _handed_out.add(port)
            chosen.append(port)
        if len(chosen) == count:
            return chosen
        raise ServiceError(f"found only {len(chosen)} of {count} free ports on {host} in 200 tries")
    finally:
        for sock in held:
            sock.close()


def free_port(host: str = LOOPBACK) -> int:
    """One free TCP port on ``host`` (see ``free_ports``)."""
    return free_ports(1, host=host)[0]


def log_tail(path: Path | None, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file, indented, for error messages ("" when there is none)."""
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"\nlast {len(text)} lines of {path}:\n" + "\n".join("    " + line for line in text)


def port_open(port: int, host: str = LOOPBACK, timeout_s: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    timeout_s: float,
    processes: Iterable[ChildProcess] = (),
    log: Path | None = None,
    interval_s: float = 0.02,
) -> float:
    """Call ``check`` until it returns True; returns the seconds it took.

    An exception from ``check`` counts as "not yet" (a server that is starting refuses connections); the last
    one is quoted if the wait fails. Raises ServiceError when ``timeout_s`` passes or one of ``processes``
    exits first, with the tail of ``log``.
    """
    watched = list(processes)
    start = time.monotonic()
    deadline = start + timeout_s
    last_error: BaseException | None = None
    while True:
        for child in watched:
            if not child.alive():
                child.kill()  # the rest of its group, then reap it for the exit code
                raise ServiceError(
                    f"{child.name} exited with code {child.returncode} while waiting for {what}"
                    + log_tail(log or child.log_path)
                )
        try:
            if check():
                return time.monotonic() - start
        except Exception as exc:  # any failure of a probe means "not ready yet"
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            first_log = log or next((child.log_path for child in watched), None)
            raise ServiceError(f"timed out after {timeout_s} s waiting for {what}{detail}" + log_tail(first_log))
        time.sleep(interval_s)


class ChildProcess:
    """One process we started, leader of its own process group, with its output in ``log_path``.

    Signals go to the group only while the leader is not reaped yet: until then its id (and so the group's)
    cannot belong to anybody else.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        with open(log_path, "ab") as log:
            try:
                self.process = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=None if env is None else dict(env),
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ServiceError(f"cannot start {name} ({self.argv[0]}): {exc}") from exc
        self.pid = self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def alive(self) -> bool:
        """Whether the leader is still running (a zombie counts as exited)."""
        if self.process.returncode is not None:
            return False
        return not self._exited_unreaped()

    def _exited_unreaped(self) -> bool:
        # WNOWAIT leaves the zombie in place: its id, and so the group id, stays ours until we reap it.
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the whole group (nothing once the leader has been reaped)."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the group and reap the leader: a crash, as a test wants it."""
        self.signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM the group; SIGKILL whatever is left of it when the leader exits or ``timeout_s`` passes.

        The final SIGKILL is sent before the leader is reaped, so it reaches members that ignored SIGTERM
        without any risk of hitting a process that reused the id.
        """
        if self.process.returncode is not None:
            return
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while not self._exited_unreaped() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.kill()


def run(argv: Sequence[str], *, what: str, timeout_s: float = 30, env: Mapping[str, str] | None = None) -> str:
    """Run a short command and return its stdout; raises ServiceError with its output when it fails."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"{what}: `{' '.join(argv)}` did not finish within {timeout_s} s") from exc
    except OSError as exc:
        raise ServiceError(f"{what}: cannot run `{argv[0]}`: {exc}") from exc
    if done.returncode != 0:
        raise ServiceError(
            f"{what}: `{' '.join(argv)}` failed with code {done.returncode}: {(done.stderr or done.stdout).strip()}"
        )
    return done.stdout
