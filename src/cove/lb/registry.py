"""Backends from the Consul-compatible registry: the instances that
``/v1/health/service/<name>?passing`` lists, weighted by Weights.Passing.

An instance's address is its service Address, or its node's Address when
that is empty (Consul's rule). Instances whose address is not an IP
(a DNS name) cannot be DNAT targets and are skipped.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

from cove.lb.model import Backend
from cove.registry import types as rt
from cove.registry.queries import Queries
from cove.store.base import Event, Store

log = logging.getLogger(__name__)


class RegistryBackends:
    def __init__(self, store: Store, datacenter: str = "dc1") -> None:
        self._store = store
        self._queries = Queries(store, datacenter)

    def prefixes(self) -> Sequence[str]:
        return (rt.SERVICES, rt.CHECKS, rt.NODES, rt.NODE_CHECKS)

    def _spellings(self) -> dict[str, set[str]]:
        """Lower-case service name -> the spellings registered (service
        names are case-insensitive for VIPs, as in DNS)."""
        names: dict[str, set[str]] = {}
        for kv in self._store.range(rt.SERVICES).kvs:
            name = unquote(kv.key[len(rt.SERVICES) :].split("/", 1)[0])
            names.setdefault(name.lower(), set()).add(name)
        return names

    def passing(self, services: Collection[str] | None = None) -> Mapping[str, Sequence[Backend]]:
        spellings = self._spellings()
        wanted = sorted(spellings) if services is None else sorted({s.lower() for s in services})
        out: dict[str, list[Backend]] = {}
        for name in wanted:
            found: list[Backend] = []
            for spelling in sorted(spellings.get(name, ())):
                entries = self._queries.health_service(spelling, passing=True).data
                found += [b for e in entries if (b := _backend(e)) is not None]
            if found:
                out[name] = found
        return out

    def affected(self, events: Sequence[Event]) -> set[str] | None:
        names: set[str] = set()
        for ev in events:
            key = ev.kv.key
            for prefix in (rt.SERVICES, rt.CHECKS):
                if key.startswith(prefix):
                    names.add(unquote(key[len(prefix) :].split("/", 1)[0]).lower())
                    break
            else:
                # A node or node check changed: any service on it may have.
                return None
        return names


def _backend(entry: Mapping[str, Any]) -> Backend | None:
    svc = entry.get("Service") or {}
    node = entry.get("Node") or {}
    text = svc.get("Address") or node.get("Address") or ""
    try:
        addr = ipaddress.ip_address(text)
        port = int(svc.get("Port") or 0)
        weight = int((svc.get("Weights") or {}).get("Passing", 1))
    except (ValueError, TypeError):
        log.debug("instance %s has no IP address; not a VIP backend", svc.get("ID"))
        return None
    if not 0 < port < 65536 or weight <= 0:
        return None
    return Backend(addr, port, weight)
