"""A fault-injecting HTTP proxy for the tests, run in threads of the test process.

It listens on a free loopback port and forwards every request to one upstream
(moto's S3 server) faithfully: method, path and query, headers, the body as
sent (Content-Length or raw ``Transfer-Encoding: chunked``), and the response's
status, headers and body. Each response carries ``Connection: close`` and the
connection is closed after it, so keep-alive never spans a fault.

A share of the requests (``rate``, optionally only some methods) is broken
instead, the kind drawn from a seeded ``random.Random`` (the kinds rotate
through a shuffled bag, so every kind turns up once enough faults were drawn):

- ``reset``: the connection is reset (SO_LINGER 0) without an answer;
- ``503``: S3's ``SlowDown``; ``500``: ``InternalError``; ``403``: ``AccessDenied``
  (the only permanent one);
- ``stall``: nothing happens for ``stall_s`` seconds, then a reset;
- ``truncate``: the request reaches the upstream (so its effect happens), the
  answer is cut short (before its status code is complete, or anywhere in its
  head) and the connection closed.

Whole outages: ``refuse()`` stops listening (connections are refused, as with a
stopped S3 or a closed port) until ``accept()``; ``black_hole()`` takes
connections and never answers (a partition) until ``accept()``.

Server behaviour the upstream lacks: ``answer_when(header, value, ...)`` answers
every request that carries a header with an S3 error of one's choosing (a KMS
key S3 refuses, where moto accepts any), and ``corrupt_bodies(n)`` flips one
byte in the middle of the body of the next ``n`` PUT requests on the way
upstream (damage in transit that only a checksum can catch).
"""

from __future__ import annotations

import contextlib
import random
import socket
import socketserver
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

TRANSIENT_KINDS = ("reset", "503", "500", "stall", "truncate")
KINDS = (*TRANSIENT_KINDS, "403")
_ERRORS = {
    "503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "500": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "403": (403, "Forbidden", "AccessDenied", "Access Denied"),
}
# Never forwarded: they describe this hop (we answer 100-continue and close every connection ourselves).
_HOP_HEADERS = {b"connection", b"keep-alive", b"proxy-connection", b"expect"}
_MAX_LINE = 64 * 1024


@dataclass
class FaultPlan:
    """Which requests to break: ``rate`` of those whose method is in ``methods`` (all when None)."""

    rate: float = 0.0
    kinds: tuple[str, ...] = TRANSIENT_KINDS
    methods: frozenset[str] | None = None
    until: float | None = None  # time.monotonic() after which the plan is off
    max_per_path: int | None = None  # break each path at most this many times
    truncate_in: str = "status-code"  # where "truncate" cuts the answer: "status-code" or "head"
    faulted_paths: Counter[str] = field(default_factory=Counter)


class FaultProxy:
    """An HTTP proxy to ``upstream_url`` that breaks requests as configured; thread-safe."""

    def __init__(self, upstream_url: str, *, seed: int = 0, stall_s: float = 2.0) -> None:
        parts = urlsplit(upstream_url)
        assert parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1"), upstream_url
        self.upstream = (parts.hostname, parts.port or 80)
        self.stall_s = stall_s
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._plan = FaultPlan()
        self._bag: list[str] = []
        self._stopping = threading.Event()
        self.requests: Counter[str] = Counter()  # by method
        self.faults: Counter[str] = Counter()  # by kind
        self.upstream_statuses: Counter[int] = Counter()
        self.proxy_errors: list[str] = []
        self._holes = threading.Event()  # set while black-holing
        self._answers: dict[tuple[bytes, bytes], tuple[int, str, str]] = {}
        self._corrupt_left = 0
        self.corrupted: list[str] = []  # the paths whose body was damaged
        self._server, self._thread = self._serve(0)
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def _serve(self, port: int) -> tuple[_Server, threading.Thread]:
        server = _Server(("127.0.0.1", port), _Handler)
        server.proxy = self
        thread = threading.Thread(target=server.serve_forever, name="faultproxy", daemon=True)
        thread.start()
        return server, thread

    # -- whole outages ---------------------------------------------------------------------------

    def refuse(self) -> None:
        """Stop listening: every new connection is refused until ``accept()``."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def black_hole(self) -> None:
        """Take connections and never answer them (a network partition) until ``accept()``."""
        self._holes.set()

    def accept(self) -> None:
        """End an outage: listen again (on the same port) and answer."""
        self._holes.clear()
        if self._server.socket.fileno() < 0:
            self._server, self._thread = self._serve(self.port)

    # -- configuration ---------------------------------------------------------------------------

    def configure(
        self,
        *,
        rate: float,
        kinds: Iterable[str] = TRANSIENT_KINDS,
        methods: Iterable[str] | None = None,
        for_s: float | None = None,
        max_per_path: int | None = None,
        truncate_in: str = "status-code",
    ) -> None:
        """Break ``rate`` (0..1) of the matching requests from now on (for ``for_s`` seconds if given).

        ``truncate_in="status-code"`` cuts a truncated answer before its status code is complete, which
        every client notices; ``"head"`` cuts it anywhere before the end of its headers, where Python's
        http.client takes the end of the connection for the end of the headers (a 200 without some of them).
        """
        kinds = tuple(kinds)
        assert truncate_in in ("status-code", "head"), truncate_in
        assert kinds and set(kinds) <= set(KINDS), kinds
        assert 0.0 <= rate <= 1.0, rate
        with self._lock:
            self._plan = FaultPlan(
                rate=rate,
                kinds=kinds,
                methods=frozenset(m.upper() for m in methods) if methods is not None else None,
                until=None if for_s is None else time.monotonic() + for_s,
                max_per_path=max_per_path,
                truncate_in=truncate_in,
            )
            self._bag = []

    def answer_when(self, header: str, value: str, *, status: int, code: str, message: str) -> None:
        """Answer every request whose ``header`` is ``value`` with this S3 error instead of forwarding it."""
        with self._lock:
            self._answers[(header.lower().encode(), value.encode())] = (status, code, message)

    def corrupt_bodies(self, count: int = 1) -> None:
        """Flip one byte in the middle of the body of each of the next ``count`` PUT requests with a body."""
        with self._lock:
            self._corrupt_left = count

    def disable(self) -> None:
        """Forward every request from now on."""
        with self._lock:
            self._plan = FaultPlan()

    @contextlib.contextmanager
    def injecting(self, **plan: Any) -> Iterator[FaultProxy]:
        """``configure(**plan)`` for the block, ``disable()`` after it."""
        self.configure(**plan)
        try:
            yield self
        finally:
            self.disable()

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters: requests by method, faults by kind, upstream statuses."""
        with self._lock:
            return {
                "requests": sum(self.requests.values()),
                "by_method": dict(self.requests),
                "faults": {kind: self.faults[kind] for kind in KINDS if self.faults[kind]},
                "upstream_statuses": dict(self.upstream_statuses),
                "proxy_errors": len(self.proxy_errors),
            }

    def close(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- used by the handler threads ------------------------------------------------------------

    def _decide(self, method: str, path: str) -> tuple[str | None, int]:
        """The fault for this request (None to forward it) and, for "truncate", how many bytes of the
        answer to send: a negative number -n means the first n of its status code ("HTTP/1.1 2"), a
        positive n the first n of its head."""
        with self._lock:
            self.requests[method] += 1
            plan = self._plan
            if plan.rate <= 0 or (plan.until is not None and time.monotonic() >= plan.until):
                return None, 0
            if plan.methods is not None and method not in plan.methods:
                return None, 0
            if plan.max_per_path is not None and plan.faulted_paths[path] >= plan.max_per_path:
                return None, 0
            if self._rng.random() >= plan.rate:
                return None, 0
            if not self._bag:
                self._bag = list(plan.kinds)
                self._rng.shuffle(self._bag)
            kind = self._bag.pop()
            plan.faulted_paths[path] += 1
            self.faults[kind] += 1
            fraction = self._rng.random()
            if plan.truncate_in == "status-code":
                return kind, -(1 + int(fraction * 11))  # "HTTP/1.1 200" is 12 bytes: send 1 to 11
            return kind, 1 + int(fraction * 1_000_000)

    def _answer_for(self, headers: dict[bytes, bytes]) -> tuple[int, str, str] | None:
        with self._lock:
            for (name, value), answer in self._answers.items():
                if headers.get(name) == value:
                    return answer
        return None

    def _maybe_corrupt(self, method: str, path: str, body: bytes) -> bytes:
        with self._lock:
            if method != "PUT" or not body or self._corrupt_left <= 0:
                return body
            self._corrupt_left -= 1
            self.corrupted.append(path)
        middle = len(body) // 2
        return body[:middle] + bytes([body[middle] ^ 0x20]) + body[middle + 1 :]

    def _upstream_status(self, status: int) -> None:
        with self._lock:
            self.upstream_statuses[status] += 1

    def _error(self, message: str) -> None:
        with self._lock:
            self.proxy_errors.append(message)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    proxy: FaultProxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        self.proxy._error(f"{type(exc).__name__}: {exc}")


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        proxy = self.server.proxy
        sock: socket.socket = self.request
        sock.settimeout(60)
        with sock.makefile("rb") as rfile:
            request_line = rfile.readline(_MAX_LINE)
            if not request_line.strip():
                return
            header_lines = _read_header_lines(rfile)
            method, target, _ = request_line.decode("latin-1").split(" ", 2)
            headers = _header_map(header_lines)
            while proxy._holes.is_set() and not proxy._stopping.is_set():
                time.sleep(0.1)  # black-holed: the client waits for its own timeout
            kind, cut = proxy._decide(method.upper(), target.split("?", 1)[0])
            if kind == "reset":
                _reset(sock)
                return
            if kind == "stall":
                proxy._stopping.wait(proxy.stall_s)
                _reset(sock)
                return
            expect_continue = headers.get(b"expect", b"").lower() == b"100-continue"
            answer = proxy._answer_for(headers)
            if answer is not None:
                if not expect_continue:
                    _read_body(rfile, headers)
                sock.sendall(_s3_error(*answer, method=method))
                _close_gracefully(sock)
                return
            if kind in _ERRORS:
                # Like S3: an early answer to an Expect: 100-continue request, whose body is never sent.
                if not expect_continue:
                    _read_body(rfile, headers)
                sock.sendall(_error_response(kind, method))
                _close_gracefully(sock)
                return
            if expect_continue:
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = proxy._maybe_corrupt(method.upper(), target.split("?", 1)[0], _read_body(rfile, headers))
            forwarded = [line for line in header_lines if _name(line) not in _HOP_HEADERS]
            head = request_line + b"".join(forwarded) + b"Connection: close\r\n\r\n"
            status, response = _exchange(proxy.upstream, head + body, method)
            proxy._upstream_status(status)
            if kind == "truncate":
                head_end = response.index(b"\r\n\r\n")
                sock.sendall(response[: -cut if cut < 0 else 1 + cut % (head_end - 1)])
            else:
                sock.sendall(response)
            _close_gracefully(sock)


def _read_header_lines(rfile: Any) -> list[bytes]:
    lines: list[bytes] = []
    while True:
        line = rfile.readline(_MAX_LINE)
        if line in (b"\r\n", b"\n", b""):
            return lines
        lines.append(line)


def _name(line: bytes) -> bytes:
    return line.split(b":", 1)[0].strip().lower()


def _header_map(lines: list[bytes]) -> dict[bytes, bytes]:
    result = {}
    for line in lines:
        name, _, value = line.partition(b":")
        result[name.strip().lower()] = value.strip()
    return result


def _read_body(rfile: Any, headers: dict[bytes, bytes]) -> bytes:
    """The message body exactly as sent: chunked framing and trailers included."""
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        raw = bytearray()
        while True:
            size_line = rfile.readline(_MAX_LINE)
            if not size_line:
                raise ConnectionError("connection closed inside a chunked body")
            raw += size_line
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    line = rfile.readline(_MAX_LINE)
                    raw += line
                    if line in (b"\r\n", b"\n", b""):
                        return bytes(raw)
            raw += _read_exactly(rfile, size + 2)
    length = int(headers.get(b"content-length", b"0") or 0)
    return _read_exactly(rfile, length)


def _read_exactly(rfile: Any, n: int) -> bytes:
    data = rfile.read(n) if n else b""
    if len(data) != n:
        raise ConnectionError(f"connection closed after {len(data)} of {n} body bytes")
    return bytes(data)


def _exchange(upstream: tuple[str, int], request: bytes, method: str) -> tuple[int, bytes]:
    """Send one request upstream and return (status, the response with ``Connection: close``)."""
    with socket.create_connection(upstream, timeout=60) as conn, conn.makefile("rb") as rfile:
        conn.sendall(request)
        while True:
            status_line = rfile.readline(_MAX_LINE)
            header_lines = _read_header_lines(rfile)
            status = int(status_line.split()[1])
            if status >= 200 or status == 101:
                break  # skip interim 1xx answers
        headers = _header_map(header_lines)
        if method.upper() == "HEAD" or status in (204, 304):
            body = b""
        elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            body = _read_body(rfile, headers)
        elif b"content-length" in headers:
            body = _read_exactly(rfile, int(headers[b"content-length"]))
        else:
            body = rfile.read()  # delimited by the end of the connection
    kept = [line for line in header_lines if _name(line) not in (b"connection", b"keep-alive")]
    return status, status_line + b"".join(kept) + b"Connection: close\r\n\r\n" + body


def _error_response(kind: str, method: str) -> bytes:
    status, reason, code, message = _ERRORS[kind]
    return _s3_error(status, code, message, method=method, reason=reason, request_id=f"faultproxy-{kind}")


def _s3_error(
    status: int, code: str, message: str, *, method: str, reason: str = "Error", request_id: str = "faultproxy"
) -> bytes:
    """An S3 error answer (the XML body S3 sends, none for HEAD)."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{request_id}</RequestId></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"x-amz-request-id: {request_id}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head if method.upper() == "HEAD" else head + body


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST, not a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _close_gracefully(sock: socket.socket) -> None:
    """FIN after the answer, then wait briefly for the peer to close (no RST over unread data)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(2)
        while sock.recv(65536):
            pass
