"""The slow path: from a packet to an answer, through the view and the cache.

``Responder.answer`` parses, scopes the asker, looks the cache up, and on a
miss resolves against the view and stores the encoded variants. It returns
the bytes to send, ``None`` to drop, or a ``ForwardJob`` for the server to
run on a worker thread. The server's own fast path only repeats the cache
lookup for plain UDP queries; everything it cannot answer comes here.
"""

from __future__ import annotations

import ipaddress
import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cove.dns.answer import Action, AnswerConfig, resolve
from cove.dns.cache import (
    QD_ONLY,
    ResponseCache,
    Table,
    assemble,
    encode_variants,
    exact_key,
    pick,
    plain_key,
)
from cove.dns.services import ServiceSource
from cove.dns.view import HOST_SCOPE, DnsView, Scope
from cove.dns.wire import (
    TCP_LIMIT,
    Query,
    QueryRejected,
    Rcode,
    build_error,
    build_status,
    parse_query,
)

ScopeTable = tuple[Scope, Table]


@dataclass(frozen=True, slots=True)
class ForwardJob:
    query: Query
    limit: int


class Responder:
    def __init__(
        self,
        view: DnsView,
        services: ServiceSource,
        cache: ResponseCache,
        cfg: AnswerConfig,
        *,
        a_limit: int = 0,
        max_udp: int = 1232,
        seed: int | None = None,
    ) -> None:
        self.view = view
        self.services = services
        self.cache = cache
        self.cfg = cfg
        self.a_limit = a_limit
        self.max_udp = max_udp
        self.view_lock = threading.Lock()
        self.host = (HOST_SCOPE, cache.table(HOST_SCOPE))
        # network -> source address -> scope and its table; replaced whole
        # by ``rebuild_scopes``, patched in place by ``update_scopes``: the
        # I/O loop only looks single keys up, which needs no lock.
        self.src_scopes: dict[str, dict[str, ScopeTable]] = {}
        self._rng = random.Random(seed)

    def rebuild_scopes(self, networks: Iterable[str]) -> None:
        """Recompute source scoping for the networks that have listeners.
        Call with ``view_lock`` held."""
        tables: dict[Scope, Table] = {}
        out: dict[str, dict[str, ScopeTable]] = {}
        for net in networks:
            per: dict[str, ScopeTable] = {}
            for src, scope in self.view.source_scopes(net).items():
                table = tables.get(scope)
                if table is None:
                    table = tables[scope] = self.cache.table(scope)
                per[src] = (scope, table)
            out[net] = per
        self.src_scopes = out

    def update_scopes(self, changes: Mapping[str, Mapping[str, Scope | None]]) -> None:
        """Set (or, ``None``, drop) the scope of single sources: network ->
        source address -> scope. Networks without a listener are skipped.
        Call with ``view_lock`` held."""
        for net, per in changes.items():
            current = self.src_scopes.get(net)
            if current is None:
                continue
            for src, scope in per.items():
                if scope is None:
                    current.pop(src, None)
                else:
                    current[src] = (scope, self.cache.table(scope))

    def scope_for(self, network: str | None, source: str) -> ScopeTable | None:
        """The asker's scope on a listener (``network`` None: the host's);
        ``None`` when the source is on none of the listener's networks."""
        if network is None:
            return self.host
        hit = self.src_scopes.get(network, {}).get(source)
        if hit is not None:
            return hit
        try:
            addr = ipaddress.ip_address(source.split("%", 1)[0])
        except ValueError:
            return None
        with self.view_lock:
            scope = self.view.subnet_scope(network, addr)
        if scope is None:
            return None
        return scope, self.cache.table(scope)

    def answer(
        self, data: bytes, network: str | None, source: str, *, tcp: bool
    ) -> bytes | ForwardJob | None:
        try:
            q = parse_query(data)
        except QueryRejected as exc:
            return build_error(data, exc)
        st = self.scope_for(network, source)
        if st is None:
            return build_status(q, Rcode.REFUSED, ra=False)
        scope, table = st
        limit = TCP_LIMIT if tcp else q.udp_limit(self.max_udp)
        plain = not tcp and q.edns is None and data[4:12] == QD_ONLY
        key = plain_key(data) if plain else exact_key(q, limit)
        variants = table.get(key)
        if variants is None:
            with self.view_lock:
                generation = self.cache.generation
                res = resolve(self.view, self.services, scope, q, self.cfg)
                if res.action is Action.ANSWER:
                    variants = encode_variants(
                        q, res, limit=limit, a_limit=self.a_limit, rng=self._rng
                    )
            if res.action is Action.FORWARD:
                return ForwardJob(q, limit)
            if variants is None:
                return build_status(q, Rcode.REFUSED)
            self.cache.insert(scope, key, variants, res.deps, generation)
        if plain:
            return data[:2] + pick(variants, data)
        return assemble(data, variants, q.question)
