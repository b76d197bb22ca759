"""``DnsService``: the embedded DNS server as one object the agent owns.

Wiring (in the agent)::

    dns = DnsService(store, clock, DnsConfig(...), hub=hub, services=registry_source)
    dns.start()                                   # binds the host listener
    dns.set_network_listeners({"vnet": [IPv4Address("10.89.0.1")]})  # as networks come and go
    ...
    dns.stop()

It follows ``networks/``, ``endpoints/`` and ``lb/vips/`` through the
``WatchHub`` the agent passes and keeps the view, the source
scoping and the response cache in step: every event invalidates exactly the
cached answers that used what it touched (a VIP change: its service's).
Without ``services`` the interim source (``EndpointServices``: ``--service
NAME:PORT`` endpoints count as passing) is used.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cove.clock import Clock
from cove.dns.answer import AnswerConfig
from cove.dns.cache import ResponseCache
from cove.dns.forward import Forwarder, ResolvConfUpstreams, Upstream, UpstreamSource
from cove.dns.responder import Responder
from cove.dns.server import DnsServer
from cove.dns.services import EndpointServices, ServiceChange, ServiceSource
from cove.dns.standby import ListenerKeeper, SnapshotFeed, encode_snapshot
from cove.dns.view import ALL, DnsView, Scope, node_dep, svc_dep
from cove.errors import CoveError
from cove.lb.model import VIPS
from cove.model import ENDPOINTS, NETWORKS, IPAddress
from cove.store.base import Event, EventType, Get, Store, local_store
from cove.store.hub import Subscription, WatchHub

log = logging.getLogger(__name__)

_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
# Seconds before listening again on a bridge that is not there yet: the
# network reconciler makes it within milliseconds of the store write, and a
# container may ask its gateway right after ``network create`` returns.
_RETRY_FIRST = 0.01
_RETRY_FAST_FOR = 300  # attempts (3 s), then
_RETRY_MAX = 0.5
# A listener is bound to its bridge's index: a bridge deleted and made again
# (by hand, repaired by the network reconciler) needs a new listener.
_RECHECK_GATEWAYS = 5.0
# RCODEs listed in /metrics even before one is sent (series that come and
# go are harder to alert on): NOERROR, SERVFAIL, NXDOMAIN, REFUSED.
_RCODES_ALWAYS = frozenset((0, 2, 3, 5))


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """Settings of the DNS service. ``upstreams`` empty means: the
    nameservers of ``resolv_conf``, re-read when it changes."""

    host_address: IPAddress = _LOOPBACK
    host_port: int = 8600
    gateway_port: int = 53
    domain: str = "cove"
    alt_domains: tuple[str, ...] = ("consul",)
    ttl: int = 0
    negative_ttl: int = 0
    a_record_limit: int = 0  # 0: no limit
    max_udp_size: int = 1232
    upstreams: tuple[Upstream, ...] = ()
    resolv_conf: str = "/etc/resolv.conf"
    upstream_timeout: float = 1.0
    node_name: str = "local"
    node_addresses: tuple[IPAddress, ...] = (_LOOPBACK,)
    forward_workers: int = 16
    cache_entries: int = 100_000
    listen_on_gateways: bool = False
    """Follow ``networks/`` and listen on every subnet's gateway by itself,
    instead of being told with ``set_network_listeners``."""


class DnsService:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: DnsConfig | None = None,
        *,
        hub: WatchHub,
        services: ServiceSource | None = None,
        upstreams: UpstreamSource | None = None,
        keeper: ListenerKeeper | None = None,
    ) -> None:
        """``hub`` delivers the store's changes (its owner starts and
        stops it); ``keeper`` keeps the listeners answering while the agent
        is away (``cove.dns.standby``)."""
        self.config = cfg = config or DnsConfig()
        self._store = store
        self._hub = hub
        self._interim: EndpointServices | None = None
        if services is None:
            services = self._interim = EndpointServices(cfg.node_name, cfg.node_addresses)
        self._services = services
        # On a shared store (a cluster), bridge networks are this host's.
        self._view = DnsView(cfg.node_name if local_store(store) is None else "")
        self._cache = ResponseCache(cfg.cache_entries)
        answer_cfg = AnswerConfig(
            domain=cfg.domain.strip(".").lower(),
            alt_domains=tuple(d.strip(".").lower() for d in cfg.alt_domains),
            ttl=cfg.ttl,
            negative_ttl=cfg.negative_ttl,
        )
        self._responder = Responder(
            self._view,
            services,
            self._cache,
            answer_cfg,
            a_limit=cfg.a_record_limit,
            max_udp=cfg.max_udp_size,
        )
        if upstreams is None:
            if cfg.upstreams:
                fixed = cfg.upstreams
                upstreams = lambda: fixed  # noqa: E731
            else:
                upstreams = ResolvConfUpstreams(cfg.resolv_conf, clock)
        self._upstreams = upstreams
        self._forwarder = Forwarder(self._foreign_upstreams, clock, timeout=cfg.upstream_timeout)
        self._server = DnsServer(
            self._responder, self._forwarder, workers=cfg.forward_workers, keeper=keeper
        )
        self._keeper = keeper
        self._feed: SnapshotFeed | None = None
        self._deferred = False
        self._revisions: dict[str, int] = {}  # what the view holds, by key
        self._gateways: dict[tuple[IPAddress, int], tuple[str, int]] = {}
        self._gateway_index: dict[tuple[IPAddress, int], int] = {}  # of its bridge
        self._listener_lock = threading.Lock()
        self._listened_nets: frozenset[str] = frozenset()
        self._retry: threading.Timer | None = None
        self._retries = 0
        self._stopped = False
        self._subs: list[Subscription] = []
        self.host_port = cfg.host_port

    # -- life --------------------------------------------------------------

    def start(self) -> None:
        """Load the view, follow the store and listen on the host address.
        Raises ``Unavailable`` when the host listener cannot be bound."""
        # Before binding: the kept sockets come back. While the keeper
        # answers on them, this service waits for ``serve``.
        self._deferred = self._keeper is not None and self._keeper.open()
        self._services.subscribe(self._on_services)
        self._subs = [
            self._hub.subscribe(NETWORKS, self._on_events),
            self._hub.subscribe(ENDPOINTS, self._on_events),
            self._hub.subscribe(VIPS, self._on_events),
        ]
        self._reload()
        self.host_port = self._server.add(self.config.host_address, self.config.host_port, None)
        if not self._deferred:
            self._server.start()
        self._follow_gateways()
        if self.config.listen_on_gateways:
            self._retry_gateways(_RECHECK_GATEWAYS)
        if self._keeper is not None:
            self._feed = SnapshotFeed(self._snapshot, self._keeper.save)
            self._feed.start()
            self._keeper.unclaimed()

    def serve(self) -> None:
        """Answer from now on, taking over from the keeper. With a keeper
        that answers, ``start`` leaves the answering to it until this is
        called: the agent calls it once the rest of its start-up (imports,
        loading, a full garbage collection) is over, so the pauses of
        start-up are not the containers' pauses."""
        if self._deferred:
            self._deferred = False
            self._server.start()
        if self._keeper is not None:
            self._keeper.serving()

    def stop(self) -> None:
        with self._listener_lock:
            self._stopped = True
            if self._retry is not None:
                self._retry.cancel()
                self._retry = None
        for sub in self._subs:
            sub.cancel()
        self._subs = []
        if self._feed is not None:
            self._feed.stop()
            self._feed.flush()
        if self._keeper is not None:
            self._keeper.release()  # the keeper answers from here on
        self._server.stop()

    def set_network_listeners(
        self,
        listeners: Mapping[str, Iterable[IPAddress]],
        devices: Mapping[str, str] | None = None,
    ) -> None:
        """Listen on exactly these gateway addresses (network name -> its
        gateways), port ``gateway_port``; listeners no longer named close.
        ``devices`` (network name -> its bridge) scopes each listener to
        packets that arrived on its bridge. Raises ``Unavailable`` when an
        address cannot be bound (the others are still set up)."""
        port = self.config.gateway_port
        devs = devices or {}
        want = {(a, port): net for net, addrs in listeners.items() for a in addrs}
        failed: Exception | None = None
        with self._listener_lock:
            for key, (net, bound) in list(self._gateways.items()):
                dev = devs.get(net)
                moved = dev is not None and self._gateway_index.get(key) != _if_index(dev)
                if want.get(key) != net or moved:
                    self._server.remove(key[0], bound)
                    del self._gateways[key]
                    self._gateway_index.pop(key, None)
            for key, net in want.items():
                if key in self._gateways:
                    continue
                try:
                    bound = self._server.add(key[0], port, net, devs.get(net))
                except Exception as exc:
                    failed = exc
                    continue
                self._gateways[key] = (net, bound)
                dev = devs.get(net)
                if dev is not None:
                    self._gateway_index[key] = _if_index(dev)
            # Read by store callbacks that hold the view lock and must not
            # take this one (lock order: listeners, then view).
            self._listened_nets = frozenset(net for net, _ in self._gateways.values())
            with self._responder.view_lock:
                self._responder.rebuild_scopes(self._listened_nets)
        if failed is not None:
            raise failed

    def listening(self) -> Sequence[tuple[IPAddress, int, str | None]]:
        return self._server.listening()

    def metrics(self) -> list[tuple[str, str, float]]:
        """Counters as (name, help, value), for the agent's /metrics."""
        st = self._server.stats
        return [
            ("cove_dns_udp_cached_total", "UDP queries answered from the hot path.", st.udp_cached),
            ("cove_dns_udp_other_total", "UDP queries through the slow path.", st.udp_other),
            ("cove_dns_tcp_queries_total", "Queries over TCP.", st.tcp),
            ("cove_dns_forwarded_total", "Queries forwarded upstream.", st.forwarded),
            (
                "cove_dns_forward_dropped_total",
                "Queries dropped: too many forwards pending.",
                st.forward_dropped,
            ),
            ("cove_dns_cache_entries", "Encoded answers cached.", len(self._cache)),
            ("cove_dns_listeners", "UDP+TCP listener pairs.", len(self._server.listening())),
        ]

    def answers(self) -> list[tuple[str | None, int, int]]:
        """Answers sent so far, as (network or None for the host listener,
        RCODE, count), for every RCODE seen and the common ones."""
        out = []
        for net, counts in list(self._server.stats.rcodes.items()):
            for rcode, n in enumerate(list(counts)):
                if n or rcode in _RCODES_ALWAYS:
                    out.append((net, rcode, n))
        return out

    def _snapshot(self) -> bytes:
        cfg = self.config
        upstreams = [(str(u.address), u.port) for u in self._foreign_upstreams()]
        with self._responder.view_lock:
            return encode_snapshot(
                self._view,
                self._responder.cfg,
                max_udp=cfg.max_udp_size,
                a_limit=cfg.a_record_limit,
                upstreams=upstreams,
            )

    def _foreign_upstreams(self) -> list[Upstream]:
        """The upstreams minus our own listeners: a resolv.conf naming one of
        them must not make a query chase its tail."""
        own = {(a, p) for a, p, _ in self._server.listening()}
        return [u for u in self._upstreams() if (u.address, u.port) not in own]

    # -- following the store -----------------------------------------------

    def _reload(self) -> None:
        # The endpoints the hub follows: on etcd, of the networks this host
        # is on (``cove.agent.following``); a part followed later arrives
        # as the hub's replay of it.
        if self._hub.scoped:
            parts = [p for p in self._hub.followed if p.startswith(ENDPOINTS)]
        else:
            parts = [ENDPOINTS]
        reads = [Get(NETWORKS, prefix=True), Get(VIPS, prefix=True)]
        reads += [Get(part, prefix=True) for part in parts]
        result = self._store.txn([], reads)
        kvs = [kv for resp in result.responses for kv in resp]
        with self._responder.view_lock:
            self._revisions = {kv.key: kv.mod_revision for kv in kvs}
            self._view.load(kvs)
            if self._interim is not None:
                self._interim.load(self._view.endpoints)
            self._responder.rebuild_scopes(self._listened_nets)
        self._cache.invalidate(["*"])

    def _follow_gateways(self) -> None:
        if not self.config.listen_on_gateways:
            return
        with self._responder.view_lock:
            want = {
                name: [s.gateway for s in net.subnets] for name, net in self._view.networks.items()
            }
            devices = {name: net.bridge for name, net in self._view.networks.items()}
        try:
            self.set_network_listeners(want, devices)
        except CoveError as exc:
            # Most often a bridge the network reconciler has not made yet:
            # try again shortly rather than wait for the next network change.
            self._retries += 1
            log.log(logging.INFO if self._retries == 1 else logging.DEBUG, "DNS: %s", exc)
            self._retry_gateways(_RETRY_FIRST if self._retries < _RETRY_FAST_FOR else _RETRY_MAX)
            return
        self._retries = 0

    def _retry_gateways(self, delay: float) -> None:
        with self._listener_lock:
            if self._stopped:
                return
            if self._retry is not None:
                if delay >= _RECHECK_GATEWAYS:
                    return
                self._retry.cancel()
            self._retry = threading.Timer(delay, self._retried)
            self._retry.daemon = True
            self._retry.start()

    def _retried(self) -> None:
        with self._listener_lock:
            self._retry = None
            if self._stopped:
                return
        self._follow_gateways()
        self._retry_gateways(_RECHECK_GATEWAYS)

    def _on_events(self, events: Sequence[Event]) -> None:
        deps: set[str] = set()
        sources: set[tuple[str, IPAddress]] = set()
        with self._responder.view_lock:
            revisions = self._revisions
            for ev in events:
                # Per key, not against the snapshot's revision: a replay
                # (a part the hub follows from now on) brings older keys.
                have = revisions.get(ev.kv.key, 0)
                if ev.type is EventType.PUT:
                    if ev.revision <= have:
                        continue  # the snapshot or an earlier event had it
                    revisions[ev.kv.key] = ev.revision
                elif ev.revision < have:
                    continue
                else:
                    revisions.pop(ev.kv.key, None)
                touched, old, new = self._view.apply(ev)
                deps |= touched
                if old is not None or new is not None:
                    sources |= self._view.touched_sources(old, new)
                    if self._interim is not None:
                        self._interim.update(ev.kv.key, new)
            if ALL in deps:
                # A network changed: which scopes exist, and whether they forward.
                self._responder.rebuild_scopes(self._listened_nets)
            elif sources:
                # Endpoints changed: only their containers' sources, so an
                # attach does not cost every container on the network.
                changes: dict[str, dict[str, Scope | None]] = {}
                for net, addr in sources:
                    changes.setdefault(net, {})[str(addr)] = self._view.source_scope(net, addr)
                self._responder.update_scopes(changes)
        if deps:
            self._cache.invalidate(deps)
            if self._feed is not None:
                self._feed.touch()
        if ALL in deps:
            self._follow_gateways()

    def _on_services(self, change: ServiceChange) -> None:
        if ServiceChange.ALL in change.services:
            self._cache.invalidate(["*"])  # rare: a node-level check changed
            return
        deps = [svc_dep(s) for s in change.services] + [node_dep(n) for n in change.nodes]
        self._cache.invalidate(deps)


def _if_index(name: str) -> int:
    """The interface's index now; 0 when it does not exist."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0
