"""``ServiceSource`` over cove's registry (the Consul catalog and health).

    hub = WatchHub(store)
    source = RegistryServices(registry.queries, hub)
    dns = DnsService(store, clock, config, hub=hub, services=source)

Passing instances come from the same query as Consul's
``/v1/health/service/<name>?passing``; changes come from the store events
under ``registry/``: an instance or check of service S invalidates S's
answers, a node's own record invalidates ``<node>.node``, and a node-level
check (which gates every service on the node) invalidates all of them.

With ACLs enabled, DNS answers what the agent's ``dns`` (else ``default``,
else anonymous) token may read: instances need service and node read, nodes
node read; any ACL change invalidates every cached answer.

Consul's DNS is case-insensitive while the catalog keeps names as written
(``registry/svc/Web/...``). DNS asks in lower case, so the source keeps an
index of the spellings in use that are not lower-case (few: most names are)
and merges the instances of every spelling of the name asked for. The index
follows ``registry/svc/`` events: a PUT adds its spelling; a DELETE drops it
once nothing is stored under it any more.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import threading
from collections.abc import Collection, Iterable, Sequence
from typing import Any
from urllib.parse import unquote

from cove.acl import Access, AclService
from cove.dns.services import ChangeCallback, Node, ServiceChange, ServiceInstance
from cove.errors import NotFound
from cove.registry import types as rt
from cove.registry.keys import QUERIES
from cove.registry.prepared import PreparedQueries
from cove.registry.queries import Queries
from cove.store.base import Event, EventType
from cove.store.hub import WatchHub

log = logging.getLogger(__name__)


class RegistryServices:
    def __init__(
        self,
        queries: Queries,
        hub: WatchHub,
        acl: AclService | None = None,
        prepared: PreparedQueries | None = None,
    ) -> None:
        self._queries = queries
        self._prepared = prepared  # for <query>.query names
        self._hub = hub
        self._acl = acl if acl is not None and acl.enabled else None
        if self._acl is not None:
            self._acl.on_change(self._on_acl_change)
        self._lock = threading.Lock()
        self._following = False
        self._callbacks: list[ChangeCallback] = []
        # lower-case name -> the other spellings it is registered under;
        # replaced whole, so readers look it up without the lock.
        self._spellings: dict[str, frozenset[str]] = {}

    def passing(self, service: str) -> Sequence[ServiceInstance]:
        if not self._following:
            self._follow()
        authz = self._acl.dns_authorizer() if self._acl is not None else None
        out: list[ServiceInstance] = []
        for name in (service, *sorted(self._spellings.get(service, ()))):
            if authz is not None and not authz.allowed("service", name, Access.READ):
                continue
            for entry in self._queries.health_service(name, passing=True).data:
                if authz is not None and not authz.allowed(
                    "node", str(entry["Node"]["Node"]), Access.READ
                ):
                    continue
                inst = _instance(service, entry)
                if inst is not None:
                    out.append(inst)
        return out

    def query(self, name: str) -> tuple[str, Sequence[ServiceInstance]] | None:
        """What prepared query ``name`` executes to: its service (lower
        case) and the instances it answers; None when no query matches."""
        if self._prepared is None:
            return None
        if not self._following:
            self._follow()
        try:
            query = self._prepared.resolve(name)
        except NotFound:
            return None
        result = self._prepared.execute(
            query,
            lambda s: self._queries.health_service(s).data,
            near="",
            coords=dict,
            limit=0,
            datacenter="",
            rng=random.Random(),
        )
        service = str(result["Service"]).lower()
        authz = self._acl.dns_authorizer() if self._acl is not None else None
        out: list[ServiceInstance] = []
        for entry in result["Nodes"]:
            if authz is not None and not (
                authz.allowed("service", str(entry["Service"]["Service"]), Access.READ)
                and authz.allowed("node", str(entry["Node"]["Node"]), Access.READ)
            ):
                continue
            inst = _instance(service, entry)
            if inst is not None:
                out.append(inst)
        return service, out

    def node(self, name: str) -> Node | None:
        if self._acl is not None and not self._acl.dns_authorizer().allowed(
            "node", name, Access.READ
        ):
            return None
        ans = self._queries.node(name)
        if not ans.found or not ans.data:
            return None
        addr = _address(str(ans.data["Node"].get("Address", "")))
        return Node(name, (addr,) if addr else ())

    def subscribe(self, callback: ChangeCallback) -> None:
        self._callbacks = [*self._callbacks, callback]
        self._follow()

    def _follow(self) -> None:
        """Start following the registry: subscribe, then read the spellings
        that exist (additions commute, so events racing the read lose
        nothing)."""
        with self._lock:
            if self._following:
                return
            self._hub.subscribe(rt.ROOT, self._on_events)
            self._add(str(name) for name in self._queries.services().data)
            self._following = True

    def _on_acl_change(self) -> None:
        change = ServiceChange(frozenset({ServiceChange.ALL}), frozenset())
        for cb in self._callbacks:
            cb(change)

    def _on_events(self, events: Sequence[Event]) -> None:
        # The index first, then the callbacks: an answer cached in between
        # would miss a new spelling until the service's next change.
        self._update_spellings(events)
        change = changes(events)
        if change.services or change.nodes:
            for cb in self._callbacks:
                cb(change)

    def _update_spellings(self, events: Sequence[Event]) -> None:
        added: set[str] = set()
        removed: set[str] = set()
        for ev in events:
            if not ev.kv.key.startswith(rt.SERVICES):
                continue
            name = _service_of(ev.kv.key)
            if name != name.lower():
                (added if ev.type is EventType.PUT else removed).add(name)
        if not added and not removed:
            return
        with self._lock:
            self._add(added)
            # Read now, after the event: a later PUT comes as its own event.
            self._remove([n for n in removed - added if self._queries.service_nodes(n).index == 0])

    def _add(self, names: Iterable[str]) -> None:
        index = dict(self._spellings)
        for name in names:
            low = name.lower()
            if name != low:
                index[low] = index.get(low, frozenset()) | {name}
        self._spellings = index

    def _remove(self, names: Collection[str]) -> None:
        if not names:
            return
        index = dict(self._spellings)
        for name in names:
            low = name.lower()
            left = index.get(low, frozenset()) - {name}
            if left:
                index[low] = left
            else:
                index.pop(low, None)
        self._spellings = index


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
        if key.startswith(QUERIES):  # a prepared query may now answer another way
            services.add(ServiceChange.ALL)
        if key.startswith(rt.NODES):
            nodes.add(unquote(key[len(rt.NODES) :]).lower())
        elif key.startswith(rt.NODE_CHECKS):
            nodes.add(unquote(key[len(rt.NODE_CHECKS) :].split("/", 1)[0]).lower())
            services.add(ServiceChange.ALL)
    return ServiceChange(frozenset(services), frozenset(nodes))


def _service_of(key: str) -> str:
    """The service a ``registry/svc/`` key belongs to, as written."""
    return unquote(key[len(rt.SERVICES) :].split("/", 1)[0])


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
