"""Sockets and threads: the I/O side of the DNS server.

One I/O thread waits on an epoll set of every listener (UDP and TCP, host
and gateways) and drains each ready UDP socket in a tight loop: batches of
``recvmmsg``/``sendmmsg`` (``cove.dns.mmsg``) where libc has them, else
``recvfrom``/``sendto`` one datagram at a time. asyncio's datagram
transport costs several times more per packet than either, and the hot path
is a dict lookup, so the loop itself is the bottleneck worth optimising
(per packet, Python object churn and the syscalls' argument handling cost
more than the lookup): plain UDP queries whose encoded answer is cached are
answered inline; everything else goes to the ``Responder``. Forwarding
runs on a small thread pool (bounded: beyond it, queries are dropped and
clients retry) and TCP connections each get a short-lived thread (bounded
too: a share per listener and per client, inside one total; see ``slots``).

Sockets are created in the thread that calls ``add`` (so in its network
namespace) with IP_FREEBIND, so a gateway listener can be bound before the
bridge has its address.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cove.dns.cache import MAX_VARIANTS, Table
from cove.dns.forward import Forwarder
from cove.dns.mmsg import HEAD, MAX_DATAGRAM, Batch, source_key
from cove.dns.responder import ForwardJob, Responder, ScopeTable
from cove.dns.slots import SlotLimits, TcpSlots
from cove.dns.standby import ListenerKeeper
from cove.dns.wire import Rcode, build_status
from cove.errors import Unavailable
from cove.model import IPAddress

log = logging.getLogger(__name__)

_IP_FREEBIND = 15
_IPV6_FREEBIND = 78
_BATCH = 256  # datagrams drained per wake-up before looking at other sockets
_SLOTS = 64  # datagrams per recvmmsg
_DRAIN_FORWARDS = 3.0  # seconds a stop waits for forwards under way
_MAX_PENDING_FORWARDS = 512
_TCP_IDLE = 5.0  # between queries, and for the whole of one query's bytes

_Address = tuple[str, int] | tuple[str, int, int, int]


def _rcode_counts() -> list[int]:
    return [0] * 16


@dataclass(slots=True)
class ServerStats:
    """Counters for /metrics (written by the I/O thread only, but for the
    forwarded and TCP answers, counted roughly from their threads)."""

    udp_cached: int = 0  # answered by the hot path
    udp_other: int = 0  # through the responder: misses, EDNS, errors, refusals
    tcp: int = 0
    forwarded: int = 0
    forward_dropped: int = 0
    # Answers sent, by network (None: the host listener), indexed by the
    # header's 4-bit RCODE: one list index per answer on the hot path.
    rcodes: dict[str | None, list[int]] = field(default_factory=dict)


@dataclass(slots=True)
class _Listener:
    sock: socket.socket
    tcp: bool
    network: str | None  # None: the host listener
    # Source scoping keyed by raw address bytes (``mmsg.source_key``), built
    # by the I/O thread from the responder's ``src_scopes`` for ``network``.
    packed: dict[bytes, ScopeTable] = field(default_factory=dict)
    packed_from: object = None
    # Answers by RCODE (``ServerStats.rcodes`` of ``network``, shared by
    # its listeners and kept when they go).
    rcodes: list[int] = field(default_factory=_rcode_counts)


class DnsServer:
    def __init__(
        self,
        responder: Responder,
        forwarder: Forwarder,
        *,
        workers: int = 16,
        tcp_limits: SlotLimits | None = None,
        batch: bool = True,
        keeper: ListenerKeeper | None = None,
    ) -> None:
        """``batch`` False keeps to recvfrom/sendto even where recvmmsg and
        sendmmsg are available. ``keeper`` shares the listeners with a
        process that answers while this one is gone (``cove.dns.standby``)."""
        self.keeper = keeper
        self._responder = responder
        self._forwarder = forwarder
        self._epoll = select.epoll()
        self._fds: dict[int, _Listener] = {}
        self._bound: dict[tuple[IPAddress, int], tuple[_Listener, _Listener]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cove-dns-fwd")
        self._pending = 0
        self._tcp_slots = TcpSlots(tcp_limits or SlotLimits())
        self._running = False
        self._thread: threading.Thread | None = None
        self.stats = ServerStats()
        self._batch = Batch.create(_SLOTS) if batch else None
        if batch and self._batch is None:
            log.info("recvmmsg/sendmmsg unavailable: DNS answers one datagram per call")

    # -- listeners ---------------------------------------------------------

    def add(
        self, address: IPAddress, port: int, network: str | None, device: str | None = None
    ) -> int:
        """Listen on ``address:port`` over UDP and TCP; returns the port (the
        one the kernel picked when ``port`` is 0). With ``device`` (a
        network's bridge) only packets that arrived on that interface
        reach the listener. Raises ``Unavailable`` when the address cannot
        be bound or the device does not exist (yet)."""
        with self._lock:
            taken = self.keeper.take(address, port) if self.keeper is not None else None
            udp, tcp = taken if taken is not None else _bind_pair(address, port, device)
            bound = udp.getsockname()[1]
            rcodes = self.stats.rcodes.setdefault(network, _rcode_counts())
            lu = _Listener(udp, False, network, rcodes=rcodes)
            lt = _Listener(tcp, True, network, rcodes=rcodes)
            self._fds = {**self._fds, udp.fileno(): lu, tcp.fileno(): lt}
            self._epoll.register(udp.fileno(), select.EPOLLIN)
            self._epoll.register(tcp.fileno(), select.EPOLLIN)
            self._bound[(address, bound)] = (lu, lt)
            if self.keeper is not None:
                self.keeper.keep(address, bound, network, udp, tcp)
            log.info("DNS listening on %s port %s (%s)", address, bound, network or "host")
            return int(bound)

    def remove(self, address: IPAddress, port: int) -> None:
        with self._lock:
            pair = self._bound.pop((address, port), None)
            if pair is None:
                return
            if self.keeper is not None:
                self.keeper.drop(address, port)
            fds = {p.sock.fileno() for p in pair}
            self._fds = {k: v for k, v in self._fds.items() if k not in fds}
            for p in pair:
                self._epoll.unregister(p.sock.fileno())
                p.sock.close()

    def listening(self) -> list[tuple[IPAddress, int, str | None]]:
        with self._lock:
            return [(a, p, pair[0].network) for (a, p), pair in self._bound.items()]

    # -- life --------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._run, name="cove-dns-io", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=5)
        # Answer the forwards already under way before the listeners go (to
        # the keeper): a query read but never answered costs its client the
        # resolver's retry, 5 s with glibc's defaults.
        deadline = time.monotonic() + _DRAIN_FORWARDS
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.01)
        self.keeper = None  # closing ours is not dropping the keeper's
        for address, port in list(self._bound):
            self.remove(address, port)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._epoll.close()

    # -- the loop ----------------------------------------------------------

    def _run(self) -> None:
        poll = self._epoll.poll
        while self._running:
            try:
                events = poll(0.2)
            except OSError:
                return
            fds = self._fds
            for fd, _ in events:
                lst = fds.get(fd)
                if lst is None:
                    continue
                try:
                    if lst.tcp:
                        self._accept(lst)
                    elif self._batch is not None:
                        self._drain_batch(lst, self._batch)
                    else:
                        self._drain(lst)
                except Exception:  # the loop must outlive any one packet
                    log.exception("DNS I/O error on %s", lst.sock)

    def _drain(self, lst: _Listener) -> None:
        sock = lst.sock
        recvfrom = sock.recvfrom
        sendto = sock.sendto
        net = lst.network
        responder = self._responder
        host_table = responder.host[1]
        scopes = responder.src_scopes.get(net, {}) if net is not None else {}
        mask = MAX_VARIANTS - 1  # see cache.pick
        rcodes = lst.rcodes
        hits = slow = 0  # counted locally, published once per batch
        for _ in range(_BATCH):
            try:
                data, addr = recvfrom(4096)
            except OSError:
                break  # EAGAIN: drained (or the socket was closed under us)
            # The hot path: a plain query seen before, byte for byte.
            if net is None:
                table: Table | None = host_table
            else:
                st = scopes.get(addr[0])
                table = st[1] if st is not None else None
            if table is not None:
                variants = table.get(data[2:])
                if variants is not None:
                    v = variants[data[1] & mask]  # the answer after its ID
                    try:  # noqa: SIM105 (cheaper than contextlib.suppress here)
                        sendto(data[:2] + v, addr)
                    except OSError:
                        pass
                    rcodes[v[1] & 15] += 1
                    hits += 1
                    continue
            slow += 1
            out = responder.answer(data, net, addr[0], tcp=False)
            if isinstance(out, ForwardJob):
                self._forward_udp(sock, addr, out, rcodes)
            elif out is not None:
                rcodes[out[3] & 15] += 1
                try:  # noqa: SIM105
                    sendto(out, addr)
                except OSError:
                    pass
        self.stats.udp_cached += hits
        self.stats.udp_other += slow

    def _drain_batch(self, lst: _Listener, batch: Batch) -> None:
        """``_drain`` with a syscall per batch rather than per datagram."""
        sock = lst.sock
        fd = sock.fileno()
        if fd < 0:
            return  # closed under us
        net = lst.network
        host_table = self._responder.host[1]
        scopes = self._packed_scopes(lst) if net is not None else None  # None: the host's
        family = sock.family
        mask = MAX_VARIANTS - 1  # see cache.pick
        out = batch.out
        out_lens = batch.out_lens
        rcodes = lst.rcodes
        hits = slow = 0
        for _ in range(_BATCH // batch.slots):
            try:
                lengths = batch.recv(fd)
            except OSError:
                break  # the socket was closed under us
            n = len(lengths)
            if not n:
                break
            heads = batch.heads(n)
            keys = batch.source_keys(n, family) if scopes is not None else []
            skip: list[int] = []
            o = p = 0  # slot i's offsets in ``heads`` and ``out``
            for i, length in enumerate(lengths):
                # The hot path: a plain query seen before, byte for byte
                # (and never one longer than a head, which is not whole in it).
                if scopes is None:
                    table: Table | None = host_table
                else:
                    st = scopes.get(keys[i])
                    table = st[1] if st is not None else None
                if table is not None and length <= HEAD:
                    variants = table.get(heads[o + 2 : o + length])
                    if variants is not None:
                        v = variants[heads[o + 1] & mask]
                        out[p : p + len(v)] = v
                        out_lens[i] = len(v)
                        rcodes[v[1] & 15] += 1
                        hits += 1
                        o += HEAD
                        p += MAX_DATAGRAM
                        continue
                slow += 1
                try:
                    answered = self._answer_slot(batch, i, length, sock, net, rcodes)
                except Exception:  # the rest of the batch must still go out
                    log.exception("DNS query from %s failed", batch.address(i))
                    answered = False
                if not answered:
                    skip.append(i)
                o += HEAD
                p += MAX_DATAGRAM
            batch.send(fd, n, skip)
            if n < batch.slots:
                break  # drained: no need for a call that finds nothing
        self.stats.udp_cached += hits
        self.stats.udp_other += slow

    def _answer_slot(
        self,
        batch: Batch,
        i: int,
        length: int,
        sock: socket.socket,
        net: str | None,
        rcodes: list[int],
    ) -> bool:
        """The slow path for slot ``i``: True when its answer is in the batch,
        False when there is none to send with it."""
        addr = batch.address(i)
        out = self._responder.answer(batch.datagram(i, length), net, addr[0], tcp=False)
        if isinstance(out, ForwardJob):
            self._forward_udp(sock, addr, out, rcodes)
            return False
        if out is None:
            return False
        rcodes[out[3] & 15] += 1
        if batch.reply(i, out):
            return True
        try:  # noqa: SIM105 (too long for a slot: on its own)
            sock.sendto(out, addr)
        except OSError:
            pass
        return False

    def _packed_scopes(self, lst: _Listener) -> dict[bytes, ScopeTable]:
        # ``src_scopes`` is replaced whole on every change: rebuild on identity.
        src = self._responder.src_scopes.get(lst.network or "")
        if src is None:
            return {}
        if lst.packed_from is not src:
            family = lst.sock.family
            packed = {}
            for address, st in src.items():
                key = source_key(address, family)
                if key is not None:
                    packed[key] = st
            lst.packed, lst.packed_from = packed, src
        return lst.packed

    def _forward_udp(
        self, sock: socket.socket, addr: _Address, job: ForwardJob, rcodes: list[int]
    ) -> None:
        with self._lock:
            if self._pending >= _MAX_PENDING_FORWARDS:
                self.stats.forward_dropped += 1
                return  # overloaded: drop, the client retries
            self._pending += 1
            self.stats.forwarded += 1
        self._pool.submit(self._forward_job, sock, addr, job, rcodes)

    def _forward_job(
        self, sock: socket.socket, addr: _Address, job: ForwardJob, rcodes: list[int]
    ) -> None:
        try:
            out = self._forwarded(job)
            if len(out) > 3:  # from the pool's threads: a rough count
                rcodes[out[3] & 15] += 1
            sock.sendto(out, addr)
        except OSError as exc:  # the listener closed meanwhile, or the client left
            log.debug("cannot send forwarded answer for %s: %s", job.query.name, exc)
        except Exception:
            log.exception("forwarding %s failed", job.query.name)
        finally:
            with self._lock:
                self._pending -= 1

    def _forwarded(self, job: ForwardJob) -> bytes:
        out = self._forwarder.query(job.query)
        if len(out) > job.limit:
            return build_status(job.query, Rcode.NOERROR, tc=True)
        return out

    def _accept(self, lst: _Listener) -> None:
        try:
            conn, peer = lst.sock.accept()
        except OSError:
            return
        key = lst.sock.fileno()
        if not self._tcp_slots.take(key, peer[0]):
            conn.close()  # at once: the client retries elsewhere or over UDP
            return
        t = threading.Thread(
            target=self._serve_tcp,
            args=(conn, peer, lst.network, key, lst.rcodes),
            name="cove-dns-tcp",
            daemon=True,
        )
        try:
            t.start()
        except RuntimeError:  # no thread to be had: neither slot nor socket may leak
            conn.close()
            self._tcp_slots.give_back(key, peer[0])

    def _serve_tcp(
        self,
        conn: socket.socket,
        peer: tuple[str, int],
        network: str | None,
        key: int,
        rcodes: list[int],
    ) -> None:
        try:
            while self._running:
                # One deadline for a whole query, so a client that trickles a
                # byte at a time cannot hold the slot forever.
                deadline = time.monotonic() + _TCP_IDLE
                head = _recv_exact(conn, 2, deadline)
                if head is None:
                    return
                (length,) = struct.unpack("!H", head)
                data = _recv_exact(conn, length, deadline)
                if data is None:
                    return
                self.stats.tcp += 1  # from several threads: a rough count
                out = self._responder.answer(data, network, peer[0], tcp=True)
                if isinstance(out, ForwardJob):
                    out = self._forwarded(out)
                if out is None:
                    return
                rcodes[out[3] & 15] += 1
                conn.sendall(struct.pack("!H", len(out)) + out)
        except OSError:
            return
        finally:
            conn.close()
            self._tcp_slots.give_back(key, peer[0])


def _recv_exact(conn: socket.socket, n: int, deadline: float) -> bytes | None:
    buf = b""
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        conn.settimeout(left)
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _bind_pair(
    address: IPAddress, port: int, device: str | None = None
) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on the same address and port (when ``port`` is
    0, the kernel's pick for UDP, tried for TCP a few times), bound to
    ``device`` if given."""
    last: OSError | None = None
    for _ in range(8):
        try:
            udp = _socket(address, socket.SOCK_DGRAM, device)
        except OSError as exc:
            last = exc
            break
        try:
            udp.bind((str(address), port))
            bound = udp.getsockname()[1]
            tcp = _socket(address, socket.SOCK_STREAM, device)
            try:
                tcp.bind((str(address), bound))
                tcp.listen(64)
                return udp, tcp
            except OSError:
                tcp.close()
                raise
        except OSError as exc:
            udp.close()
            last = exc
            if port != 0:
                break
    raise Unavailable(f"cannot listen for DNS on {address} port {port}: {last}") from last


def _socket(address: IPAddress, kind: int, device: str | None = None) -> socket.socket:
    v6 = address.version == 6
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, kind)
    try:
        s.setblocking(False)
        if device is not None:
            # The gateway address is a host address, reachable from any
            # interface: a container on another network (or one that took
            # an address of this network) must not be answered as if it
            # were on this one, nor have its names forwarded upstream.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if v6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.IPPROTO_IPV6, _IPV6_FREEBIND, 1)
        else:
            s.setsockopt(socket.IPPROTO_IP, _IP_FREEBIND, 1)
        if kind == socket.SOCK_DGRAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    except OSError:
        s.close()
        raise
    return s
