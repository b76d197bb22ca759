"""The supervisor's side of DNS across agent restarts: it keeps a duplicate
of every DNS listening socket of the agent and answers on them while no
agent is connected.

The agent opens one long-lived connection to ``supervisor.sock`` with the
request ``{"op": "dns-keep"}``; the supervisor answers with the pairs it
keeps (one ``held`` message each, the UDP and TCP sockets attached with
SCM_RIGHTS) and ``ready``. From then on the agent sends ``keep`` (a pair
attached), ``drop`` and ``serving``. Every message is one JSON line naming
how many descriptors travel with it (``fds``).

While the connection is open the supervisor never reads the sockets: the
agent does. When it closes (a stop, or the agent's death: the kernel closes
it even on kill -9) the supervisor loads the agent's last snapshot
(``dns-snapshot.json``) and answers from it (``cove.dns.standby``); queries
that arrived meanwhile wait in the sockets' buffers, which live as long as
any process holds them. Names the agent would forward go to the snapshot's
first upstream, without waiting: the answer is relayed when it comes, or
SERVFAIL after a second. A new agent takes the same sockets back, so the
addresses are never unbound, and says ``serving`` once it answers; both may
answer for that moment, which is harmless.

The supervisor imports this module (and so the pure DNS modules, about
1.3 MB) when the first agent connects; the view lives only while the agent
is away.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cove.dns.responder import ForwardJob
from cove.dns.slots import SlotLimits, TcpSlots
from cove.dns.standby import Standby, forward_query, relay
from cove.dns.wire import QueryRejected, Rcode, build_status, parse_query

log = logging.getLogger(__name__)

SNAPSHOT = "dns-snapshot.json"
_MAX_FDS = 16  # per message; every message carries 0 or 2
_BATCH = 64  # datagrams per readiness before looking at other sockets
_MAX_FORWARDS = 256  # upstream queries pending at once
_FORWARD_TIMEOUT = 1.0
_TCP_IDLE = 5.0  # a standing-in TCP connection with no whole query for this long is closed


class Channel:
    """JSON lines with descriptors over a Unix stream socket. A message's
    descriptors arrive with its first bytes, in order, so they are matched
    to lines by count whatever the reads return."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""
        self._fds: list[int] = []

    def send(self, msg: dict[str, Any], fds: Sequence[int] = ()) -> None:
        """Raises ``OSError``."""
        data = json.dumps({**msg, "fds": len(fds)}).encode() + b"\n"
        if fds:
            sent = socket.send_fds(self.sock, [data], list(fds))
            if sent < len(data):
                self.sock.sendall(data[sent:])
        else:
            self.sock.sendall(data)

    def receive(self) -> list[tuple[dict[str, Any], list[int]]] | None:
        """The whole messages read so far; ``None`` at end of stream.
        Raises ``BlockingIOError`` when there is nothing to read, ``OSError``
        and ``ValueError`` on a broken stream."""
        data, fds, _, _ = socket.recv_fds(self.sock, 65536, _MAX_FDS)
        self._fds += fds
        if not data:
            self.close()
            return None
        self._buf += data
        out: list[tuple[dict[str, Any], list[int]]] = []
        while b"\n" in self._buf:
            line, _, self._buf = self._buf.partition(b"\n")
            msg = json.loads(line)
            if not isinstance(msg, dict):
                raise ValueError("not a JSON object")
            n = int(msg.get("fds", 0))
            got, self._fds = self._fds[:n], self._fds[n:]
            out.append((msg, got))
        return out

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                socket.socket(fileno=fd).close()
        self._fds = []
        # shutdown, not only close: a thread blocked reading this socket
        # holds it open, and the peer must see the end now.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def adopt(fd: int) -> socket.socket:
    """A socket object for a received descriptor (family and type from the
    kernel). Non-blocking: the flag is shared with the sender, which wants
    it too."""
    s = socket.socket(fileno=fd)
    s.setblocking(False)
    return s


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            socket.socket(fileno=fd).close()


@dataclass(slots=True)
class _Held:
    address: str
    port: int
    network: str | None
    udp: socket.socket
    tcp: socket.socket


@dataclass(slots=True)
class _Forward:
    sock: socket.socket  # connected to the upstream
    listener: _Held
    client: Any  # the address to answer
    job: ForwardJob
    qid: int
    deadline: float


@dataclass(slots=True)
class _Conn:
    sock: socket.socket
    network: str | None
    peer: str
    since: float  # when the current query's first bytes were awaited
    listener: int  # the listening socket's fd: its share in ``DnsKeeper.slots``
    buf: bytes = b""


class DnsKeeper:
    """Lives in the supervisor's selector loop; ``on_event`` takes the
    selector events whose kind starts with ``dns-``."""

    def __init__(self, sel: selectors.BaseSelector, root: Path) -> None:
        self.sel = sel
        self.root = root
        self.held: dict[tuple[str, int], _Held] = {}
        self.agent: Channel | None = None
        self.answering = False
        self.standby: Standby | None = None
        self.conns: dict[int, _Conn] = {}
        # The agent's own shares (per listener, per client, in all): standing
        # in, one container's slow connections must not take TCP DNS from
        # the others either.
        self.slots = TcpSlots(SlotLimits())
        self.forwards: dict[int, _Forward] = {}

    # -- the agent's connection ----------------------------------------------

    def attach(self, conn: socket.socket) -> None:
        """An agent asks for the pairs kept (``conn`` is off the selector)."""
        if self.agent is not None:
            self._detach()  # an earlier agent's: only one agent owns the root
        ch = Channel(conn)
        try:
            conn.settimeout(5.0)  # the agent reads at once; never hang the loop
            for h in self.held.values():
                msg = {"op": "held", "address": h.address, "port": h.port, "network": h.network}
                ch.send(msg, [h.udp.fileno(), h.tcp.fileno()])
            ch.send({"op": "ready"})
            conn.setblocking(False)
        except OSError as exc:
            log.warning("cannot hand the DNS listeners to the agent: %s", exc)
            ch.close()
            return
        self.agent = ch
        self.sel.register(conn, selectors.EVENT_READ, ("dns-agent", conn))
        log.info("agent connected for DNS; %d listener pairs handed back", len(self.held))

    def _detach(self) -> None:
        if self.agent is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(self.agent.sock)
        self.agent.close()
        self.agent = None

    def tick(self) -> None:
        """Called every few seconds: upstreams that never answered get
        their clients a SERVFAIL, and TCP clients that sent no whole query
        for a while are let go (so a few slow ones cannot hold every slot)."""
        if self.forwards:
            self._expire()
        now = time.monotonic()
        for c in [c for c in self.conns.values() if now - c.since > _TCP_IDLE]:
            self._tcp_close(c)

    def on_event(self, kind: str, obj: Any) -> None:
        try:
            self._on_event(kind, obj)
        except Exception:  # the loop supervises containers: DNS must never end it
            log.exception("DNS keeper failed on %s", kind)

    def _on_event(self, kind: str, obj: Any) -> None:
        if kind == "dns-agent":
            self._from_agent()
        elif not self.answering:
            # Readiness from the same wake-up as the agent's "serving": the
            # agent reads these now (answering without a snapshot would be
            # a SERVFAIL).
            return
        elif kind == "dns-udp":
            self._udp(obj)
        elif kind == "dns-tcp":
            self._accept(obj)
        elif kind == "dns-conn":
            self._tcp_read(obj)
        elif kind == "dns-up":
            self._upstream(obj)

    def _from_agent(self) -> None:
        ch = self.agent
        if ch is None:
            return
        try:
            msgs = ch.receive()
        except BlockingIOError:
            return
        except (OSError, ValueError) as exc:
            log.warning("DNS connection from the agent broken: %s", exc)
            msgs = None
        if msgs is None:
            self._detach()
            self._take_over()
            return
        for msg, fds in msgs:
            try:
                self._message(msg, fds)
            except (KeyError, ValueError, TypeError) as exc:
                log.warning("bad DNS message from the agent %s: %s", msg, exc)
                close_fds(fds)

    def _message(self, msg: dict[str, Any], fds: list[int]) -> None:
        op = msg.get("op")
        if op == "keep" and len(fds) == 2:
            # int() first: a bad message must not leave a socket half adopted
            key = (str(msg["address"]), int(msg["port"]))
            old = self.held.pop(key, None)
            if old is not None:
                self._close_held(old)
            net = msg.get("network")
            h = _Held(key[0], key[1], None if net is None else str(net), *map(adopt, fds))
            self.held[key] = h
            if self.answering:
                self._watch(h)
        elif op == "drop":
            gone = self.held.pop((str(msg["address"]), int(msg["port"])), None)
            if gone is not None:
                self._close_held(gone)
            close_fds(fds)
        elif op == "serving":
            self._stand_down()
            close_fds(fds)
        else:
            close_fds(fds)

    # -- standing in -------------------------------------------------------

    def _take_over(self) -> None:
        if self.answering or not self.held:
            return
        try:
            self.standby = Standby((self.root / SNAPSHOT).read_bytes())
        except Exception as exc:  # any unreadable snapshot: answer SERVFAIL instead
            log.warning(
                "no usable DNS snapshot (%s): answering SERVFAIL until the agent is back", exc
            )
            self.standby = None
        self.answering = True
        for h in self.held.values():
            self._watch(h)
        log.info("agent gone: answering DNS on %d listener pairs from its snapshot", len(self.held))

    def _watch(self, h: _Held) -> None:
        self.sel.register(h.udp, selectors.EVENT_READ, ("dns-udp", h))
        self.sel.register(h.tcp, selectors.EVENT_READ, ("dns-tcp", h))
        self._udp(h)  # what queued while no one read

    def _stand_down(self) -> None:
        if not self.answering:
            return
        for h in self.held.values():
            self._unwatch(h)
        for c in list(self.conns.values()):
            self._tcp_close(c)
        for f in list(self.forwards.values()):
            self._forwarded(f, None)
        self.answering = False
        self.standby = None
        log.info("the agent serves DNS again")

    def _unwatch(self, h: _Held) -> None:
        for s in (h.udp, h.tcp):
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(s)

    def _close_held(self, h: _Held) -> None:
        self._unwatch(h)
        h.udp.close()
        h.tcp.close()

    def _answer(
        self, data: bytes, network: str | None, source: str, *, tcp: bool
    ) -> bytes | ForwardJob | None:
        if self.standby is not None:
            return self.standby.answer(data, network, source, tcp=tcp)

        try:
            return build_status(parse_query(data), Rcode.SERVFAIL)
        except QueryRejected:
            return None

    def _udp(self, h: _Held) -> None:
        sock = h.udp
        for _ in range(_BATCH):
            try:
                data, addr = sock.recvfrom(4096)
            except OSError:
                return  # drained
            try:
                out = self._answer(data, h.network, addr[0], tcp=False)
            except Exception:  # the loop supervises containers: never let a packet end it
                log.exception("DNS query from %s failed", addr[0])
                continue
            if isinstance(out, ForwardJob):
                self._forward(h, addr, out)
            elif out is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(out, addr)

    def _forward(self, h: _Held, client: Any, job: ForwardJob) -> None:
        self._expire()
        standby = self.standby
        if standby is None or not standby.upstreams or len(self.forwards) >= _MAX_FORWARDS:
            self._reply(h, client, build_status(job.query, Rcode.SERVFAIL))
            return
        host, port = standby.upstreams[0]
        qid = int.from_bytes(os.urandom(2), "big")  # not secrets: that loads OpenSSL
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setblocking(False)
            s.connect((host, port))
            s.send(forward_query(job, qid))
        except OSError:
            s.close()
            self._reply(h, client, build_status(job.query, Rcode.SERVFAIL))
            return
        f = _Forward(s, h, client, job, qid, time.monotonic() + _FORWARD_TIMEOUT)
        self.forwards[s.fileno()] = f
        self.sel.register(s, selectors.EVENT_READ, ("dns-up", f))

    def _upstream(self, f: _Forward) -> None:
        try:
            wire = f.sock.recv(65535)
        except BlockingIOError:
            return
        except OSError:
            wire = b""  # refused: nobody listens there
        out = relay(f.job, f.qid, wire) if wire else None
        if out is None and wire:
            return  # not the answer: wait on
        self._forwarded(f, out)

    def _forwarded(self, f: _Forward, out: bytes | None) -> None:
        self.forwards.pop(f.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(f.sock)
        f.sock.close()
        self._reply(f.listener, f.client, out or build_status(f.job.query, Rcode.SERVFAIL))

    def _expire(self) -> None:
        now = time.monotonic()
        for f in [f for f in self.forwards.values() if f.deadline <= now]:
            self._forwarded(f, None)

    def _reply(self, h: _Held, client: Any, out: bytes) -> None:
        with contextlib.suppress(OSError):
            h.udp.sendto(out, client)

    def _accept(self, h: _Held) -> None:
        try:
            conn, peer = h.tcp.accept()
        except OSError:
            return
        listener = h.tcp.fileno()
        if not self.slots.take(listener, str(peer[0])):
            conn.close()
            return
        conn.setblocking(False)
        c = _Conn(conn, h.network, str(peer[0]), time.monotonic(), listener)
        self.conns[conn.fileno()] = c
        self.sel.register(conn, selectors.EVENT_READ, ("dns-conn", c))

    def _tcp_read(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(65537)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._tcp_close(c)
            return
        c.buf += data
        while len(c.buf) >= 2:
            n = int.from_bytes(c.buf[:2], "big")
            if len(c.buf) < 2 + n:
                return
            query, c.buf = c.buf[2 : 2 + n], c.buf[2 + n :]
            try:
                out = self._answer(query, c.network, c.peer, tcp=True)
                if not isinstance(out, bytes):  # dropped (never forwarded over TCP)
                    raise OSError("dropped")
                c.sock.settimeout(1.0)  # answers are small: a stuck client costs a second
                c.sock.sendall(len(out).to_bytes(2, "big") + out)
                c.sock.setblocking(False)
                c.since = time.monotonic()
            except Exception:
                self._tcp_close(c)
                return

    def _tcp_close(self, c: _Conn) -> None:
        if self.conns.pop(c.sock.fileno(), None) is not None:
            self.slots.give_back(c.listener, c.peer)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(c.sock)
        c.sock.close()
