"""How the etcd client reaches a cluster: endpoints, TLS, failover, retries.

Several endpoints are used *sticky with failover*: every request goes to the
current member until it fails; then that member is set aside for a cool-down
(``COOLDOWN``) and the next one that is not set aside takes over. Every
request asks etcd to answer only with a leader (gRPC metadata ``hasleader``,
which the JSON gateway takes from the ``Grpc-Metadata-Hasleader`` header), so
a member cut off from the others says "no leader" at once instead of hanging
or serving a stale read, and its watches are cancelled.

A failed attempt is one of three kinds (``Failure``):

- ``SAFE``: the request was certainly not applied (the connection could not
  be opened; etcd said "no leader", "leader changed", "too many requests",
  "not capable"): retried on the next member.
- ``UNKNOWN``: it may or may not have been applied (the connection broke
  after the request was sent, the answer timed out, etcd said "request timed
  out"): retried as well, because every request of the store is idempotent
  except a transaction, which the store re-checks first (see
  ``EtcdStore.txn``).
- ``FATAL``: retrying cannot help (a TLS certificate refused either way).

Retries wait a bounded, growing, jittered delay and stop at the request's
deadline (``timeout``, 5 s by default), after which the caller gets a
``StoreError`` that names the endpoints.
"""

from __future__ import annotations

import contextlib
import enum
import http.client
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cove.errors import InvalidArgument, StoreError

DEFAULT_TIMEOUT = 5.0  # seconds a request may spend on failover and retries
COOLDOWN = 2.0  # seconds a failed member is set aside
FIRST_DELAY = 0.05
MAX_DELAY = 0.5
# The gRPC metadata that makes etcd refuse a request (and cancel a watch)
# while the member has no leader.
LEADER_HEADERS = {"Content-Type": "application/json", "Grpc-Metadata-Hasleader": "true"}

# gRPC status codes the gateway returns in {"code": N}
GRPC_INVALID_ARGUMENT = 3
GRPC_DEADLINE_EXCEEDED = 4
GRPC_NOT_FOUND = 5
GRPC_RESOURCE_EXHAUSTED = 8
GRPC_UNAVAILABLE = 14

# etcd's answers that mean "not applied, ask again" (rpctypes: ErrNoLeader,
# ErrLeaderChanged, ErrTooManyRequests, ErrNotCapable, ErrGRPCNoLeader...).
_SAFE_MESSAGES = ("no leader", "leader changed", "too many requests", "not capable")
# ...and those that leave the outcome of a write unknown (ErrTimeout,
# ErrTimeoutDueToLeaderFail, ErrTimeoutDueToConnectionLost, ErrStopped).
_UNKNOWN_MESSAGES = ("request timed out", "server stopped", "timed out")


class TlsRefused(StoreError):
    """A member refused this client's TLS (or its certificate was not
    trusted): waiting will not mend it, the files or the cluster must change."""


class Failure(enum.Enum):
    SAFE = "safe"
    UNKNOWN = "unknown"
    FATAL = "fatal"


def classify_answer(code: int, message: str, status: int) -> Failure | None:
    """The kind of an error answer worth retrying, or None (a final answer:
    not found, invalid argument, compacted...)."""
    text = message.lower()
    if any(m in text for m in _SAFE_MESSAGES):
        return Failure.SAFE
    if any(m in text for m in _UNKNOWN_MESSAGES):
        return Failure.UNKNOWN
    if code == GRPC_RESOURCE_EXHAUSTED and "too large" not in text:
        return Failure.SAFE
    if code in (GRPC_UNAVAILABLE, GRPC_DEADLINE_EXCEEDED) or status in (502, 503, 504):
        return Failure.UNKNOWN
    return None


@dataclass(frozen=True, slots=True)
class EtcdTls:
    """Client TLS for ``etcds://``: the CA that signs the members'
    certificates (None: the system's CAs) and this client's certificate and
    key (both or neither)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def context(self) -> ssl.SSLContext:
        """The client context; ``InvalidArgument`` names a missing,
        unreadable or mismatched file."""
        if (self.cert is None) != (self.key is None):
            raise InvalidArgument(
                "--store-cert and --store-key go together: give both (PEM files) or neither"
            )
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.ca is not None:
            _readable(self.ca, "--store-ca")
            try:
                ctx.load_verify_locations(cafile=str(self.ca))
            except (ssl.SSLError, ValueError) as exc:
                raise InvalidArgument(
                    f"--store-ca {self.ca} is not a PEM CA certificate: {exc}"
                ) from None
        if self.cert is not None and self.key is not None:
            _readable(self.cert, "--store-cert")
            _readable(self.key, "--store-key")
            try:
                ctx.load_cert_chain(str(self.cert), str(self.key))
            except (ssl.SSLError, ValueError) as exc:
                raise InvalidArgument(
                    f"--store-cert {self.cert} and --store-key {self.key} are not a matching "
                    f"PEM certificate and key: {exc}"
                ) from None
        return ctx


def _readable(path: Path, flag: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {flag} {path}: {exc.strerror or exc}") from None


class Endpoint:
    """One member's client URL, and whether it is set aside."""

    def __init__(self, url: str, tls: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgument("an etcd endpoint must be http(s)://host:port", endpoint=url)
        try:
            port = parts.port or 2379
        except ValueError:
            raise InvalidArgument("an etcd endpoint has a bad port", endpoint=url) from None
        if parts.scheme == "https" and tls is None:
            tls = ssl.create_default_context()
        self.tls = tls if parts.scheme == "https" else None
        self.host = parts.hostname
        self.port = port
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{parts.scheme}://{host}:{self.port}"
        self.down_until = 0.0
        self.failures = 0  # times set aside: a watch on it moves when this grows

    def connect(self, timeout: float | None) -> http.client.HTTPConnection:
        """A connected HTTP(S) connection; raises ``OSError`` (an
        ``ssl.SSLError`` for a refused handshake) when it cannot be made."""
        conn: http.client.HTTPConnection
        if self.tls is not None:
            conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=self.tls
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.connect()
        except BaseException:
            conn.close()
            raise
        if conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # A member whose host vanished (no reset ever comes) is
                # noticed on a quiet watch stream within about 10 s.
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 4)
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        return conn


def tls_refused(exc: BaseException) -> bool:
    """A TLS failure no retry mends: a certificate refused by either side
    (not a connection cut during the handshake)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return True
    cut = isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError)
    if isinstance(exc, ssl.SSLError) and not cut:
        reason = (exc.reason or "").upper()
        return "CERTIFICATE" in reason or "ALERT" in reason or "HANDSHAKE" in reason
    return False


class Members:
    """The endpoints, the current one, and the cool-down of failed ones."""

    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.endpoints = endpoints
        self._current = 0
        self._lock = threading.Lock()

    def current(self) -> Endpoint:
        """The member to ask: the current one unless it is set aside, else
        the next one that is not, else the one set aside the longest ago."""
        now = time.monotonic()
        with self._lock:
            n = len(self.endpoints)
            for i in range(n):
                ep = self.endpoints[(self._current + i) % n]
                if ep.down_until <= now:
                    self._current = (self._current + i) % n
                    return ep
            ep = min(self.endpoints, key=lambda e: e.down_until)
            self._current = self.endpoints.index(ep)
            return ep

    def failed(self, endpoint: Endpoint) -> None:
        """Set ``endpoint`` aside and move on to the next member."""
        with self._lock:
            endpoint.down_until = time.monotonic() + COOLDOWN
            endpoint.failures += 1
            if len(self.endpoints) > 1 and self.endpoints[self._current] is endpoint:
                self._current = (self._current + 1) % len(self.endpoints)

    def describe(self) -> str:
        return ",".join(e.url for e in self.endpoints)


class Backoff:
    """Growing, jittered delays up to ``MAX_DELAY``, within a deadline."""

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self._delay = FIRST_DELAY

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def wait(self) -> bool:
        """Sleep before the next attempt; False when the deadline is near."""
        left = self.remaining()
        if left <= 0:
            return False
        time.sleep(min(left, self._delay * random.uniform(0.5, 1.0)))
        self._delay = min(MAX_DELAY, self._delay * 2)
        return self.remaining() > 0


def attempt_timeout(backoff: Backoff, members: int, timeout: float) -> float:
    """How long one attempt may take: enough left over to try another member
    when there is one, and at least a second."""
    share = timeout / 2 if members > 1 else timeout
    return max(1.0, min(backoff.remaining(), share))


def error_fields(answer: dict[str, Any]) -> tuple[int, str]:
    code = int(answer.get("code", 0) or 0)
    message = str(answer.get("error") or answer.get("message") or "unknown etcd error")
    return code, message
