"""Answering while the agent is away: the snapshot the agent leaves behind,
the stand-in answerer built from it, and the protocol the agent's DNS
server uses to hand its listening sockets to whoever keeps them.

The agent's DNS lives and dies with the agent, but the containers' resolver
must not: the listening sockets are shared with a longer-lived keeper (the
supervisor; see ``cove.runtime.dns_keeper``), so datagrams queue in them
instead of bouncing off a closed port, and the keeper answers from the last
snapshot until an agent takes the sockets back.

The snapshot is the DNS view (networks, endpoints, VIPs) and the answer
settings, as JSON. ``Standby`` answers from it with the agent's own code
(``Responder`` and ``resolve``) so names, scoping and reverse lookups come
out the same. Names the agent would forward go to the snapshot's first
upstream (``ForwardJob``: the keeper sends it without waiting and relays the
answer; ``forward_query`` and ``relay`` build the packets). What the
snapshot does not carry gets SERVFAIL, which clients retry rather than
cache: service instances (health lives in the agent's registry).

This module imports only the pure DNS modules: it runs in the supervisor.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from cove.dns.answer import AnswerConfig
from cove.dns.cache import ResponseCache
from cove.dns.responder import ForwardJob, Responder
from cove.dns.services import ChangeCallback, Node, ServiceInstance
from cove.dns.view import DnsView
from cove.dns.wire import (
    FLAG_QR,
    HEADER,
    QueryRejected,
    Rcode,
    build_status,
    encode_query,
    parse_query,
)
from cove.model import ENDPOINTS, NETWORKS, IPAddress
from cove.store.base import KeyValue

log = logging.getLogger(__name__)

VERSION = 1
EDNS_SIZE = 1232  # what the agent's forwarder offers upstream


class ListenerKeeper(Protocol):
    """Keeps duplicates of the DNS listening sockets outside the agent.

    ``DnsService.start`` calls ``open`` first (False: no keeper after all).
    ``DnsServer`` calls ``take`` before binding (a pair kept from an earlier
    agent is reused, so the address is never unbound), ``keep`` after every
    listener it opens and ``drop`` when it closes one for good.
    ``DnsService`` calls ``unclaimed`` for the pairs it did not take back,
    ``save`` with each new snapshot, ``serving`` once it answers (from
    ``serve``) and ``release`` when it stops: the keeper answers from then
    on."""

    def open(self) -> bool:
        """Whether the keeper is there (and answers until ``serving``)."""
        ...

    def take(self, address: IPAddress, port: int) -> tuple[socket.socket, socket.socket] | None: ...

    def keep(
        self,
        address: IPAddress,
        port: int,
        network: str | None,
        udp: socket.socket,
        tcp: socket.socket,
    ) -> None: ...

    def drop(self, address: IPAddress, port: int) -> None: ...

    def serving(self) -> None: ...

    def unclaimed(self) -> None: ...

    def save(self, snapshot: bytes) -> None: ...

    def release(self) -> None: ...


def encode_snapshot(
    view: DnsView,
    cfg: AnswerConfig,
    *,
    max_udp: int,
    a_limit: int,
    upstreams: Sequence[tuple[str, int]] = (),
) -> bytes:
    """The view, answer settings and upstreams as JSON. Call with the view's
    lock held."""
    data: dict[str, Any] = {
        "upstreams": [[a, p] for a, p in upstreams],
        "version": VERSION,
        "domain": cfg.domain,
        "alt_domains": list(cfg.alt_domains),
        "ttl": cfg.ttl,
        "negative_ttl": cfg.negative_ttl,
        "max_udp": max_udp,
        "a_limit": a_limit,
        "networks": [n.to_json() for n in view.networks.values()],
        "endpoints": {k: e.to_json() for k, e in view.endpoints.items()},
        "vips": {k: str(v) for k, v in view.vips.items()},
    }
    return json.dumps(data, separators=(",", ":")).encode()


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` so a reader (or a crash) sees the old or the new
    file whole. Raises ``OSError``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


class _Unknown(Exception):
    """The snapshot cannot say (service health lives in the registry)."""


class _NoServices:
    def passing(self, service: str) -> Sequence[ServiceInstance]:
        raise _Unknown(service)

    def node(self, name: str) -> Node | None:
        raise _Unknown(name)

    def subscribe(self, callback: ChangeCallback) -> None:
        pass


class Standby:
    """Answers from a snapshot. Raises ``ValueError`` (or ``KeyError``,
    ``TypeError``) on a snapshot it cannot read."""

    def __init__(self, snapshot: bytes) -> None:
        data = json.loads(snapshot)
        if data.get("version") != VERSION:
            raise ValueError(f"snapshot version {data.get('version')!r}")
        view = DnsView()
        kvs = [_kv(NETWORKS + n["name"], n) for n in data["networks"]]
        kvs += [_kv(k, e) for k, e in data["endpoints"].items() if k.startswith(ENDPOINTS)]
        view.load(kvs)
        view.vips = {k: ipaddress.ip_address(v) for k, v in data["vips"].items()}
        cfg = AnswerConfig(
            domain=data["domain"],
            alt_domains=tuple(data["alt_domains"]),
            ttl=int(data["ttl"]),
            negative_ttl=int(data["negative_ttl"]),
        )
        self.responder = Responder(
            view,
            _NoServices(),
            ResponseCache(10_000),
            cfg,
            a_limit=int(data["a_limit"]),
            max_udp=int(data["max_udp"]),
        )
        self.responder.rebuild_scopes(view.networks)
        self.upstreams = tuple((str(a), int(p)) for a, p in data.get("upstreams", ()))

    def answer(
        self, data: bytes, network: str | None, source: str, *, tcp: bool
    ) -> bytes | ForwardJob | None:
        """The response to ``data`` from ``source`` on a listener of
        ``network`` (``None``: the host's), ``None`` to drop it, or a
        ``ForwardJob`` for ``upstreams[0]`` (never over TCP)."""
        try:
            out = self.responder.answer(data, network, source, tcp=tcp)
        except _Unknown:
            try:
                q = parse_query(data)
            except QueryRejected:
                return None  # unreachable: the responder parsed it before
            return build_status(q, Rcode.SERVFAIL)
        if isinstance(out, ForwardJob) and (tcp or not self.upstreams):
            return build_status(out.query, Rcode.SERVFAIL)
        return out


def forward_query(job: ForwardJob, qid: int) -> bytes:
    """The query to send upstream for ``job``, with our own ID ``qid``."""
    return encode_query(qid, job.query.question, edns_size=EDNS_SIZE if job.query.edns else None)


def relay(job: ForwardJob, qid: int, wire: bytes) -> bytes | None:
    """The client's answer from an upstream's ``wire``; ``None`` when it
    is not the answer to ``qid`` (stray or spoofed: keep waiting)."""
    q = job.query
    end = HEADER.size + len(q.question)
    if len(wire) < end:
        return None
    rid, flags, qd = struct.unpack_from("!HHH", wire)
    if rid != qid or not flags & FLAG_QR or qd != 1:
        return None
    if wire[HEADER.size : end].lower() != q.question.lower():
        return None
    if len(wire) > job.limit:
        return build_status(q, Rcode.NOERROR, tc=True)
    return struct.pack("!H", q.id) + wire[2 : HEADER.size] + q.question + wire[end:]


def _kv(key: str, value: Any) -> KeyValue:
    return KeyValue(key, json.dumps(value).encode(), 0, 0, 0)


class SnapshotFeed:
    """Writes a snapshot shortly after the view changes: at most one write
    per ``delay``, on a thread of its own, so a burst of store events costs
    one encoding. ``build`` returns the snapshot; ``save`` stores it."""

    def __init__(
        self, build: Callable[[], bytes], save: Callable[[bytes], None], delay: float = 0.05
    ) -> None:
        self._build = build
        self._save = save
        self._delay = delay
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()  # one write at a time: ``flush`` and the thread
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.flush()
        self._thread = threading.Thread(target=self._run, name="cove-dns-snapshot", daemon=True)
        self._thread.start()

    def touch(self) -> None:
        self._wake.set()

    def flush(self) -> None:
        """Write the snapshot now (start-up, shutdown)."""
        with self._lock:
            try:
                self._save(self._build())
            except OSError as exc:
                log.warning("cannot save the DNS snapshot: %s", exc)

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait()
            if self._stopped.wait(self._delay):
                return
            self._wake.clear()
            self.flush()
