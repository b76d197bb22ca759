"""Where a VIP's passing backends come from.

``Backends`` is the interface the registry implements (passing instances
with Weights.Passing). ``EndpointBackends`` derives backends from the
endpoints of running containers started with ``--service name:port``, so
VIPs work before, and without, registry entries. ``MergedBackends`` joins
several sources.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from cove.errors import InvalidArgument
from cove.lb.model import Backend
from cove.model import ENDPOINTS, Endpoint
from cove.store.base import Event, Store

log = logging.getLogger(__name__)


class Backends(Protocol):
    def prefixes(self) -> Sequence[str]:
        """Store prefixes whose changes may change ``passing``."""
        ...

    def passing(self, services: Collection[str] | None = None) -> Mapping[str, Sequence[Backend]]:
        """Passing backends by service name (only ``services`` when given;
        a service with none may be missing from the answer)."""
        ...

    def affected(self, events: Sequence[Event]) -> set[str] | None:
        """Services whose backends these events may have changed; None when
        it cannot tell (the caller then recomputes every service)."""
        ...


def parse_service(spec: str) -> tuple[str, int]:
    """``name:port`` as given to ``--service``. Raises ``InvalidArgument``."""
    name, sep, port = spec.rpartition(":")
    if not sep or not name or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"invalid service {spec!r}: expected NAME:PORT")
    return name.lower(), int(port)


def endpoint_backends(ep: Endpoint) -> list[tuple[str, Backend]]:
    out: list[tuple[str, Backend]] = []
    for spec in ep.services:
        try:
            name, port = parse_service(spec)
        except InvalidArgument:
            log.warning("endpoint %s has a malformed service %r; ignored", ep.id, spec)
            continue
        for addr in ep.addresses:
            out.append((name, Backend(addr, port)))
    return out


def _services_of(value: bytes) -> set[str]:
    if not value:
        return set()
    try:
        data = json.loads(value)
        return {parse_service(s)[0] for s in data.get("services") or ()}
    except (ValueError, InvalidArgument, AttributeError):
        return set()


class EndpointBackends:
    """Backends from ``endpoints/<network>/<node>/<id>`` records (one per running
    container and network): every ``name:port`` service of an endpoint is a
    backend of weight 1 at each of the endpoint's addresses."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def prefixes(self) -> Sequence[str]:
        return (ENDPOINTS,)

    def passing(self, services: Collection[str] | None = None) -> Mapping[str, Sequence[Backend]]:
        wanted = set(services) if services is not None else None
        out: dict[str, list[Backend]] = {}
        for kv in self._store.range(ENDPOINTS).kvs:
            try:
                ep = Endpoint.from_json(json.loads(kv.value))
            except (ValueError, KeyError) as exc:
                log.warning("unreadable endpoint %s: %s", kv.key, exc)
                continue
            for name, backend in endpoint_backends(ep):
                if wanted is None or name in wanted:
                    out.setdefault(name, []).append(backend)
        return out

    def affected(self, events: Sequence[Event]) -> set[str] | None:
        names: set[str] = set()
        for ev in events:
            names |= _services_of(ev.kv.value)
            if ev.prev is not None:
                names |= _services_of(ev.prev.value)
        return names


class MergedBackends:
    """Several sources as one: a service's backends are the union."""

    def __init__(self, *sources: Backends) -> None:
        self._sources = sources

    def prefixes(self) -> Sequence[str]:
        return tuple(p for s in self._sources for p in s.prefixes())

    def passing(self, services: Collection[str] | None = None) -> Mapping[str, Sequence[Backend]]:
        out: dict[str, list[Backend]] = {}
        for s in self._sources:
            for name, bs in s.passing(services).items():
                out.setdefault(name, []).extend(bs)
        return out

    def affected(self, events: Sequence[Event]) -> set[str] | None:
        names: set[str] = set()
        for s in self._sources:
            prefixes = tuple(s.prefixes())
            mine = [e for e in events if e.kv.key.startswith(prefixes)]
            if not mine:
                continue
            got = s.affected(mine)
            if got is None:
                return None
            names |= got
        return names


def address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError as exc:
        raise InvalidArgument(f"invalid IP address {text!r}") from exc
