"""Forwarding names cove does not own to upstream resolvers.

``Forwarder.query`` is blocking (the server runs it on worker threads): it
tries at most three upstreams in order, each with a per-try timeout, over UDP
and over TCP when the upstream truncates, and returns an answer for the
client (its ID, its question) or SERVFAIL when every upstream timed out,
refused or answered garbage: never a hang. Answers are cached by question
for the upstream's TTL (negative answers for the SOA's negative TTL, RFC
2308), and served with the TTLs counted down.

``ResolvConfUpstreams`` reads the nameservers of a resolv.conf and re-reads
it when it changes; the agent builds it (only the agent decides which files
cove reads).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cove.clock import Clock
from cove.dns.wire import (
    FLAG_QR,
    FLAG_TC,
    HEADER,
    Query,
    QueryRejected,
    Rcode,
    RRType,
    build_status,
    encode_query,
    skip_name,
)
from cove.errors import InvalidArgument, UpstreamFailed
from cove.model import IPAddress

log = logging.getLogger(__name__)

MAX_UPSTREAMS = 3
EDNS_SIZE = 1232  # the DNS flag day 2020 size: no IP fragmentation
_RR_FIXED = struct.Struct("!HHIH")


@dataclass(frozen=True, slots=True)
class Upstream:
    address: IPAddress
    port: int = 53

    @classmethod
    def parse(cls, text: str) -> Upstream:
        """``1.2.3.4``, ``1.2.3.4:5353``, ``::1`` or ``[::1]:5353``. Raises
        ``InvalidArgument`` otherwise."""
        host, port = text, 53
        try:
            if text.startswith("["):
                host, _, rest = text[1:].partition("]")
                port = int(rest[1:]) if rest.startswith(":") else 53
            elif text.count(":") == 1:
                host, _, p = text.partition(":")
                port = int(p)
            return cls(ipaddress.ip_address(host), port)
        except ValueError as exc:
            raise InvalidArgument("bad upstream resolver", upstream=text) from exc


UpstreamSource = Callable[[], Sequence[Upstream]]


class ResolvConfUpstreams:
    """The ``nameserver`` lines of a resolv.conf, re-read when the file
    changes (checked at most once a second)."""

    def __init__(self, path: str, clock: Clock) -> None:
        self._path = path
        self._clock = clock
        self._checked = -1e18
        self._stamp: tuple[int, int, int] | None = None
        self._upstreams: tuple[Upstream, ...] = ()

    def __call__(self) -> tuple[Upstream, ...]:
        now = self._clock.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            self._reload()
        return self._upstreams

    def _reload(self) -> None:
        try:
            st = os.stat(self._path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp == self._stamp:
                return
            with open(self._path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as exc:
            log.warning("cannot read %s: %s", self._path, exc)
            return
        self._stamp = stamp
        self._upstreams = tuple(parse_resolv_conf(text))
        log.info("upstream resolvers: %s", [str(u.address) for u in self._upstreams])


def parse_resolv_conf(text: str) -> list[Upstream]:
    out: list[Upstream] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            addr = fields[1].split("%", 1)[0]  # drop an IPv6 zone
            try:
                out.append(Upstream(ipaddress.ip_address(addr)))
            except ValueError:
                continue
    return out[:MAX_UPSTREAMS]


@dataclass(slots=True)
class _Cached:
    wire: bytes
    stored: float
    expires: float
    ttls: tuple[tuple[int, int], ...]  # (offset, original TTL)


class Forwarder:
    def __init__(
        self,
        upstreams: UpstreamSource,
        clock: Clock,
        *,
        timeout: float = 1.0,
        max_entries: int = 10_000,
        max_ttl: int = 3600,
        max_negative_ttl: int = 300,
    ) -> None:
        self._upstreams = upstreams
        self._clock = clock
        self._timeout = timeout
        self._max = max_entries
        self._max_ttl = max_ttl
        self._max_neg = max_negative_ttl
        self._lock = threading.Lock()
        self._cache: dict[tuple[bytes, bool], _Cached] = {}

    def query(self, q: Query) -> bytes:
        """The client's answer: from the cache, from an upstream, or SERVFAIL."""
        key = (q.key, q.edns is not None)
        now = self._clock.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit.expires > now:
            return _for_client(hit, q, int(now - hit.stored))
        qid = secrets.randbits(16)
        msg = encode_query(qid, q.question, edns_size=EDNS_SIZE if q.edns else None)
        for up in list(self._upstreams())[:MAX_UPSTREAMS]:
            try:
                wire = self._ask(up, msg, qid, q)
            except UpstreamFailed as exc:
                log.debug("upstream %s failed for %s: %s", up.address, q.name, exc)
                continue
            entry = self._remember(key, wire, now)
            return _for_client(entry, q, 0)
        return build_status(q, Rcode.SERVFAIL)

    def _ask(self, up: Upstream, msg: bytes, qid: int, q: Query) -> bytes:
        wire = self._udp(up, msg, qid, q)
        if struct.unpack_from("!H", wire, 2)[0] & FLAG_TC:
            wire = self._tcp(up, msg, qid, q)
        rcode = wire[3] & 0xF
        if rcode in (Rcode.SERVFAIL, Rcode.REFUSED, Rcode.NOTIMP, Rcode.FORMERR):
            raise UpstreamFailed(f"rcode {rcode}")
        return wire

    def _udp(self, up: Upstream, msg: bytes, qid: int, q: Query) -> bytes:
        family = socket.AF_INET if up.address.version == 4 else socket.AF_INET6
        deadline = self._clock.monotonic() + self._timeout
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            try:
                s.connect((str(up.address), up.port))
                s.send(msg)
                while True:
                    left = deadline - self._clock.monotonic()
                    if left <= 0:
                        raise UpstreamFailed("timeout")
                    s.settimeout(left)
                    wire = s.recv(65535)
                    if _matches(wire, qid, q):
                        return wire  # anything else: stray or spoofed, keep waiting
            except OSError as exc:
                raise UpstreamFailed(str(exc)) from exc

    def _tcp(self, up: Upstream, msg: bytes, qid: int, q: Query) -> bytes:
        family = socket.AF_INET if up.address.version == 4 else socket.AF_INET6
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(self._timeout)
                s.connect((str(up.address), up.port))
                s.sendall(struct.pack("!H", len(msg)) + msg)
                (length,) = struct.unpack("!H", _recv_exact(s, 2))
                wire = _recv_exact(s, length)
        except OSError as exc:
            raise UpstreamFailed(str(exc)) from exc
        if not _matches(wire, qid, q):
            raise UpstreamFailed("garbage over TCP")
        return wire

    def _remember(self, key: tuple[bytes, bool], wire: bytes, now: float) -> _Cached:
        ttls, ttl, negative = _ttls(wire, HEADER.size + len(key[0]))
        ttl = min(ttl, self._max_neg if negative else self._max_ttl)
        entry = _Cached(wire, now, now + ttl, ttls)
        if ttl > 0:
            with self._lock:
                if len(self._cache) >= self._max:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[key] = entry
        return entry


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise UpstreamFailed("connection closed")
        buf += chunk
    return buf


def _matches(wire: bytes, qid: int, q: Query) -> bool:
    if len(wire) < HEADER.size + len(q.question):
        return False
    rid, flags, qd = struct.unpack_from("!HHH", wire)
    if rid != qid or not flags & FLAG_QR or qd != 1:
        return False
    end = HEADER.size + len(q.question)
    return wire[HEADER.size : end - 4].lower() + wire[end - 4 : end] == q.key


def _ttls(wire: bytes, pos: int) -> tuple[tuple[tuple[int, int], ...], int, bool]:
    """TTL offsets of every record but OPT, and how long the answer may be
    cached: the smallest answer TTL, or for a negative answer the SOA's
    min(TTL, MINIMUM); and whether it is negative. A TTL of 0 when it must not be cached (or is
    garbage, which is still relayed: the client judges it)."""
    try:
        _, _, _, an, ns, ar = HEADER.unpack_from(wire)
        rcode = wire[3] & 0xF
        out: list[tuple[int, int]] = []
        negative: int | None = None
        for i in range(an + ns + ar):
            pos, _ = skip_name(wire, pos, b"")
            rtype, _, ttl, rdlen = _RR_FIXED.unpack_from(wire, pos)
            if pos + 10 + rdlen > len(wire):
                return (), 0, False
            if rtype != RRType.OPT:
                out.append((pos + 4, ttl))
            if rtype == RRType.SOA and an <= i < an + ns and rdlen >= 20:
                (minimum,) = struct.unpack_from("!I", wire, pos + 10 + rdlen - 4)
                negative = min(ttl, minimum)
            pos += 10 + rdlen
    except (QueryRejected, struct.error):
        return (), 0, False
    if an == 0 or rcode == Rcode.NXDOMAIN:
        return tuple(out), negative or 0, True
    return tuple(out), min(t for _, t in out[:an]), False


def _for_client(entry: _Cached, q: Query, elapsed: int) -> bytes:
    buf = bytearray(entry.wire)
    struct.pack_into("!H", buf, 0, q.id)
    buf[HEADER.size : HEADER.size + len(q.question)] = q.question
    for offset, ttl in entry.ttls:
        struct.pack_into("!I", buf, offset, max(0, ttl - elapsed))
    return bytes(buf)
