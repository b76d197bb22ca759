"""The DNS view of the store: networks, endpoints and service VIPs indexed
for lookups.

Pure (no I/O): ``DnsView`` is loaded from ``networks/``, ``endpoints/`` and
``lb/vips/`` key-values and then fed store events; each event returns the
*dependencies* it touched (``name:<name>``, ``ptr:<address>``,
``svc:<service>``) so the response cache drops exactly the answers built
from them. A network change returns ``ALL``: it changes which zones and
scopes exist, and is rare. A VIP change returns its service's dependency.

Writers are a single thread; readers on other threads only do key lookups
and read tuples that are replaced, never mutated, so they need no lock.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from cove.errors import InvalidArgument
from cove.lb.model import VIPS, Vip
from cove.model import ENDPOINTS, NETWORKS, Endpoint, IPAddress, Network, NetworkDriver
from cove.naming import dns_names
from cove.store.base import Event, EventType, KeyValue

log = logging.getLogger(__name__)

ALL = "*"
"""The dependency that stands for everything (a network changed)."""


def name_dep(name: str) -> str:
    return "name:" + name


def ptr_dep(address: IPAddress) -> str:
    return "ptr:" + str(address)


def svc_dep(service: str) -> str:
    return "svc:" + service


def node_dep(node: str) -> str:
    return "node:" + node


@dataclass(frozen=True, slots=True)
class Scope:
    """Who is asking. ``networks`` is ``None`` for the host listener (every
    network, only as NAME.NETWORK.<domain>); for a container, the networks
    its endpoints are on. ``forward``: whether unknown names may go upstream."""

    networks: frozenset[str] | None
    forward: bool


HOST_SCOPE = Scope(None, forward=True)


class DnsView:
    def __init__(self, node: str = "") -> None:
        """``node``: this host's node in a cluster (a shared store). A
        bridge network is host-local: another node's endpoint on it is out
        of this host's reach, and its name does not resolve here (as for
        Docker's bridge networks); an overlay network's do."""
        self._node = node
        self.networks: dict[str, Network] = {}
        # DNS label (lower case; a name that is no label: its DNS-safe form
        # too) -> network name
        self.net_labels: dict[str, str] = {}
        self._endpoints: dict[str, Endpoint] = {}
        # network -> name -> endpoints answering to it
        self.names: dict[str, dict[str, tuple[Endpoint, ...]]] = {}
        self.addrs: dict[IPAddress, tuple[Endpoint, ...]] = {}
        self.containers: dict[str, frozenset[str]] = {}
        self._container_keys: dict[str, set[str]] = {}
        # service (lower-case) -> its virtual IP; replaced whole on change
        self.vips: dict[str, IPAddress] = {}

    @property
    def endpoints(self) -> dict[str, Endpoint]:
        return self._endpoints

    def load(self, kvs: Iterable[KeyValue]) -> None:
        """Replace everything with the given ``networks/``, ``endpoints/`` and
        ``lb/vips/`` key-values."""
        self.networks = {}
        self.net_labels = {}
        self.vips = {}
        self._endpoints = {}
        self.names = {}
        self.addrs = {}
        self.containers = {}
        self._container_keys = {}
        for kv in kvs:
            self._put(kv.key, kv.value)

    def apply(self, event: Event) -> tuple[set[str], Endpoint | None, Endpoint | None]:
        """Apply one store event. Returns the dependencies it touched and, for
        an endpoint, its state before and after (``None``: absent)."""
        key = event.kv.key
        old = self._endpoints.get(key)
        if event.type is EventType.PUT:
            self._put(key, event.kv.value)
        else:
            self._delete(key)
        if key.startswith(NETWORKS):
            return {ALL}, None, None
        if key.startswith(VIPS):
            return {svc_dep(_vip_service(key))}, None, None
        new = self._endpoints.get(key)
        deps: set[str] = set()
        for ep in (old, new):
            if ep is not None:
                deps.update(name_dep(n) for n in ep.names())
                deps.update(ptr_dep(a) for a in ep.addresses)
        return deps, old, new

    def _put(self, key: str, value: bytes) -> None:
        if key.startswith(VIPS):
            self._put_vip(key, value)
            return
        try:
            data = json.loads(value)
            if key.startswith(NETWORKS):
                net = Network.from_json(data)
            elif key.startswith(ENDPOINTS):
                ep = Endpoint.from_json(data)
            else:
                return
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring undecodable %s: %s", key, exc)
            return
        if key.startswith(NETWORKS):
            self.networks = {**self.networks, net.name: net}
            self._index_networks()
            return
        self._delete(key)
        if self._elsewhere(ep):
            return
        self._endpoints[key] = ep
        byname = dict(self.names.get(ep.network, {}))
        for n in ep.names():
            byname[n] = (*byname.get(n, ()), ep)
        self.names[ep.network] = byname
        for a in ep.addresses:
            self.addrs[a] = (*self.addrs.get(a, ()), ep)
        self._container_keys.setdefault(ep.container_id, set()).add(key)
        self._index_container(ep.container_id)

    def _elsewhere(self, ep: Endpoint) -> bool:
        """Whether ``ep`` is another node's on a host-local network."""
        if not self._node or not ep.node or ep.node == self._node:
            return False
        net = self.networks.get(ep.network)
        return net is not None and net.driver is not NetworkDriver.OVERLAY

    def _put_vip(self, key: str, value: bytes) -> None:
        name = _vip_service(key)
        try:
            data = json.loads(value)
            if not isinstance(data, dict):
                raise InvalidArgument("a VIP record must be a JSON object")
            vip = Vip.from_json(data)
        except (ValueError, InvalidArgument) as exc:
            log.warning("ignoring undecodable %s: %s", key, exc)
            # A broken record must not leave the old address answering.
            self.vips = {k: v for k, v in self.vips.items() if k != name}
            return
        self.vips = {**self.vips, name: vip.address}

    def _delete(self, key: str) -> None:
        if key.startswith(VIPS):
            name = _vip_service(key)
            self.vips = {k: v for k, v in self.vips.items() if k != name}
            return
        if key.startswith(NETWORKS):
            name = key[len(NETWORKS) :]
            self.networks = {k: v for k, v in self.networks.items() if k != name}
            self._index_networks()
            return
        ep = self._endpoints.pop(key, None)
        if ep is None:
            return
        byname = dict(self.names.get(ep.network, {}))
        for n in ep.names():
            rest = tuple(e for e in byname.get(n, ()) if e.id != ep.id)
            if rest:
                byname[n] = rest
            else:
                byname.pop(n, None)
        self.names[ep.network] = byname
        for a in ep.addresses:
            left = tuple(e for e in self.addrs.get(a, ()) if e.id != ep.id)
            if left:
                self.addrs[a] = left
            else:
                self.addrs.pop(a, None)
        self._container_keys.get(ep.container_id, set()).discard(key)
        self._index_container(ep.container_id)

    def _index_networks(self) -> None:
        labels: dict[str, str] = {}
        for name in sorted(self.networks):
            for form in dns_names(name):
                labels.setdefault(form, name)
        for name in self.networks:  # a name as given wins over another's safe form
            labels[name.lower()] = name
        self.net_labels = labels

    def network_of(self, label: str) -> str | None:
        """The network a (lower-case) DNS label names, or ``None``."""
        return self.net_labels.get(label)

    def _index_container(self, container_id: str) -> None:
        keys = self._container_keys.get(container_id, set())
        nets = frozenset(self._endpoints[k].network for k in keys if k in self._endpoints)
        if nets:
            self.containers[container_id] = nets
        else:
            self.containers.pop(container_id, None)
            self._container_keys.pop(container_id, None)

    def source_scopes(self, network: str) -> dict[str, Scope]:
        """Scope of each container address on ``network`` (keys as the
        kernel prints source addresses), for that network's listener."""
        net = self.networks.get(network)
        forward = net is not None and not net.internal
        out: dict[str, Scope] = {}
        for ep in self._endpoints.values():
            if ep.network != network:
                continue
            scope = Scope(self.containers.get(ep.container_id, frozenset({network})), forward)
            for a in ep.addresses:
                out[str(a)] = scope
        return out

    def source_scope(self, network: str, address: IPAddress) -> Scope | None:
        """Scope of one container address on ``network``, as ``source_scopes``
        has it; ``None`` when no endpoint on ``network`` has that address."""
        ep = next((e for e in reversed(self.addrs.get(address, ())) if e.network == network), None)
        if ep is None:
            return None
        net = self.networks.get(network)
        forward = net is not None and not net.internal
        return Scope(self.containers.get(ep.container_id, frozenset({network})), forward)

    def touched_sources(
        self, old: Endpoint | None, new: Endpoint | None
    ) -> set[tuple[str, IPAddress]]:
        """The (network, address) sources whose scope an endpoint change
        (applied already) may have changed: the endpoint's own addresses,
        and every address of its container, whose set of networks is part
        of each of their scopes. So a change costs its container's
        endpoints, not every endpoint's."""
        out: set[tuple[str, IPAddress]] = set()
        for ep in (old, new):
            if ep is None:
                continue
            out.update((ep.network, a) for a in ep.addresses)
            for key in self._container_keys.get(ep.container_id, ()):
                other = self._endpoints.get(key)
                if other is not None:
                    out.update((other.network, a) for a in other.addresses)
        return out

    def subnet_scope(self, network: str, source: IPAddress) -> Scope | None:
        """Scope of an unknown source inside ``network``'s subnets (a
        container not registered yet, or the host on the bridge); ``None``
        when the source is on none of them."""
        net = self.networks.get(network)
        if net is None:
            return None
        for subnet in net.subnets:
            if source.version == subnet.cidr.version and source in subnet.cidr:
                return Scope(frozenset({network}), not net.internal)
        return None


def _vip_service(key: str) -> str:
    # The key names the service (``VipService`` writes it lower-case); a DNS
    # name is matched lower-case whatever a writer did.
    return key[len(VIPS) :].lower()
