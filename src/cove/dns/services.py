"""What DNS needs from service discovery, as a protocol.

The registry (``cove.registry``) plugs in by implementing ``ServiceSource``
and passing it to ``DnsService(..., services=source)``:

- ``passing(service)`` returns the instances whose checks all pass (DNS
  never returns the others);
- ``node(name)`` returns a node's addresses for ``<node>.node.cove``;
- ``subscribe(callback)`` registers ``callback(ServiceChange)`` to be called
  after every change of passing instances or nodes, naming what changed, so
  DNS drops exactly the cached answers that used it. The callback is quick
  and takes only DNS's cache lock; call it without holding a lock that
  ``passing`` or ``node`` take.

Until the registry lands, ``EndpointServices`` is the interim source: every
container endpoint that carries ``--service NAME:PORT`` counts as one
passing instance at the endpoint's address, on the local node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cove.model import Endpoint, IPAddress, ServiceSpec


@dataclass(frozen=True, slots=True)
class ServiceInstance:
    service: str  # lower-case
    id: str
    node: str
    address: IPAddress
    port: int
    tags: tuple[str, ...] = ()  # lower-case
    network: str = ""  # the cove network the address is on, "" if none


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True, slots=True)
class ServiceChange:
    """What changed: service names (``ALL`` among them: every service) and
    node names, lower-case."""

    ALL = "*"

    services: frozenset[str] = frozenset()
    nodes: frozenset[str] = frozenset()


ChangeCallback = Callable[[ServiceChange], None]


class ServiceSource(Protocol):
    def passing(self, service: str) -> Sequence[ServiceInstance]:
        """Instances of ``service`` (lower-case) whose checks pass."""
        ...

    def node(self, name: str) -> Node | None: ...

    def subscribe(self, callback: ChangeCallback) -> None: ...


def parse_service(spec: str) -> tuple[str, int] | None:
    """``(name, port)`` of a ``--service NAME:PORT[:TAGS]``, or ``None``
    when malformed."""
    parsed = ServiceSpec.parse(spec)
    return None if parsed is None else (parsed.name, parsed.port)


class EndpointServices:
    """The interim source: services declared on endpoints, all passing.

    ``DnsService`` feeds it from the endpoint events it already watches
    (``update``); it tells subscribers which services changed."""

    def __init__(self, node_name: str, node_addresses: Sequence[IPAddress]) -> None:
        self._node = Node(node_name.lower(), tuple(node_addresses))
        self._instances: dict[str, tuple[ServiceInstance, ...]] = {}
        self._by_endpoint: dict[str, tuple[ServiceInstance, ...]] = {}
        self._callbacks: list[ChangeCallback] = []

    def passing(self, service: str) -> Sequence[ServiceInstance]:
        return self._instances.get(service, ())

    def node(self, name: str) -> Node | None:
        return self._node if name == self._node.name else None

    def subscribe(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    def load(self, endpoints: Mapping[str, Endpoint]) -> None:
        """Replace everything with ``endpoints`` (store key -> endpoint)."""
        for key in [k for k in self._by_endpoint if k not in endpoints]:
            self.update(key, None)
        for key, ep in endpoints.items():
            self.update(key, ep)

    def update(self, key: str, endpoint: Endpoint | None) -> frozenset[str]:
        """Set (or with ``None`` remove) the endpoint stored at ``key``;
        returns the names of the services that changed and notifies."""
        old = self._by_endpoint.pop(key, ())
        new = tuple(self._instances_of(key, endpoint)) if endpoint else ()
        if new:
            self._by_endpoint[key] = new
        changed = frozenset(i.service for i in (*old, *new))
        old_ids = {i.id for i in old}
        for service in changed:
            # Copy on write: readers on other threads see a whole tuple.
            kept = [i for i in self._instances.get(service, ()) if i.id not in old_ids]
            kept += [i for i in new if i.service == service]
            if kept:
                self._instances[service] = tuple(kept)
            else:
                self._instances.pop(service, None)
        if changed:
            for cb in self._callbacks:
                cb(ServiceChange(services=changed))
        return changed

    def _instances_of(self, key: str, ep: Endpoint) -> Iterable[ServiceInstance]:
        for spec in ep.services:
            parsed = parse_service(spec)
            if parsed is None:
                continue
            name, port = parsed
            for addr in ep.addresses:
                yield ServiceInstance(
                    service=name,
                    id=f"{key}#{name}:{port}@{addr}",
                    node=self._node.name,
                    address=addr,
                    port=port,
                    network=ep.network,
                )
