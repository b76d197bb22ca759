"""``ServiceSource`` over cove's registry (the Consul catalog and health).

    hub = WatchHub(store)
    source = RegistryServices(registry.queries, hub)
    dns = DnsService(store, clock, config, hub=hub, services=source)

Passing instances come from the same query as Consul's
``/v1/health/service/<name>?passing``; changes come from the store events
under ``registry/``: an instance or check of service S invalidates S's
answers, a node's own record invalidates ``<node>.node``, and a node-level
check (which gates every service on the node) invalidates all of them.

Consul's DNS is case-insensitive while the catalog keeps names as written:
services registered with capitals are found by their lower-case names only
if registered lower-case (the registry's convention).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

from cove.dns.services import ChangeCallback, Node, ServiceChange, ServiceInstance
from cove.registry import types as rt
from cove.registry.queries import Queries
from cove.store.base import Event
from cove.store.hub import WatchHub

log = logging.getLogger(__name__)


class RegistryServices:
    def __init__(self, queries: Queries, hub: WatchHub) -> None:
        self._queries = queries
        self._hub = hub

    def passing(self, service: str) -> Sequence[ServiceInstance]:
        out: list[ServiceInstance] = []
        for entry in self._queries.health_service(service, passing=True).data:
            inst = _instance(service, entry)
            if inst is not None:
                out.append(inst)
        return out

    def node(self, name: str) -> Node | None:
        ans = self._queries.node(name)
        if not ans.found or not ans.data:
            return None
        addr = _address(str(ans.data["Node"].get("Address", "")))
        return Node(name, (addr,) if addr else ())

    def subscribe(self, callback: ChangeCallback) -> None:
        def on_events(events: Sequence[Event]) -> None:
            change = changes(events)
            if change.services or change.nodes:
                callback(change)

        self._hub.subscribe(rt.ROOT, on_events)


def changes(events: Sequence[Event]) -> ServiceChange:
    """Which services and nodes a batch of ``registry/`` events touched. A
    node-level check touches every service: it is reported as the node
    plus ``ServiceChange.ALL``."""
    services: set[str] = set()
    nodes: set[str] = set()
    for ev in events:
        key = ev.kv.key
        for prefix in (rt.SERVICES, rt.CHECKS):
            if key.startswith(prefix):
                services.add(unquote(key[len(prefix) :].split("/", 1)[0]).lower())
        if key.startswith(rt.NODES):
            nodes.add(unquote(key[len(rt.NODES) :]).lower())
        elif key.startswith(rt.NODE_CHECKS):
            nodes.add(unquote(key[len(rt.NODE_CHECKS) :].split("/", 1)[0]).lower())
            services.add(ServiceChange.ALL)
    return ServiceChange(frozenset(services), frozenset(nodes))


def _instance(service: str, entry: dict[str, Any]) -> ServiceInstance | None:
    svc = entry.get("Service") or {}
    node = entry.get("Node") or {}
    addr = _address(str(svc.get("Address") or node.get("Address") or ""))
    if addr is None:
        return None
    return ServiceInstance(
        service=service,
        id=str(svc.get("ID", "")),
        node=str(node.get("Node", "")).lower(),
        address=addr,
        port=int(svc.get("Port", 0)),
        tags=tuple(str(t).lower() for t in svc.get("Tags") or ()),
    )


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
