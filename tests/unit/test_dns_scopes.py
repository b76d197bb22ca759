"""Source scoping follows endpoint changes one container at a time: after
any sequence of attaches and detaches, the scopes patched from the touched
sources equal the scopes computed from scratch, and the Responder scopes
a container's questions by its networks at once."""

from __future__ import annotations

import ipaddress
import json
import random

import dns.message

from cove.dns.answer import AnswerConfig
from cove.dns.cache import ResponseCache
from cove.dns.responder import ForwardJob, Responder
from cove.dns.services import EndpointServices
from cove.dns.view import DnsView, Scope
from cove.model import Endpoint, Network, Subnet
from cove.store.base import Event, EventType, KeyValue

NETS = ("front", "back", "sealed")
SUBNETS = {"front": "10.89.0.", "back": "10.90.0.", "sealed": "10.91.0."}


class Feed:
    """Store events for a view, as the hub delivers them."""

    def __init__(self) -> None:
        self.revision = 0
        self.live: dict[str, bytes] = {}

    def _kv(self, key: str, value: bytes) -> KeyValue:
        self.revision += 1
        return KeyValue(key, value, 1, self.revision, 1)

    def put(self, key: str, data: dict[str, object]) -> Event:
        value = json.dumps(data).encode()
        prev = self.live.get(key)
        self.live[key] = value
        kv = self._kv(key, value)
        return Event(EventType.PUT, kv, KeyValue(key, prev, 1, 1, 1) if prev else None)

    def delete(self, key: str) -> Event:
        prev = self.live.pop(key)
        return Event(EventType.DELETE, self._kv(key, b""), KeyValue(key, prev, 1, 1, 1))


def _network(name: str) -> dict[str, object]:
    cidr = ipaddress.ip_network(SUBNETS[name] + "0/24")
    net = Network(
        id=f"id-{name}",
        name=name,
        subnets=(Subnet(cidr, cidr.network_address + 1),),
        bridge=f"cvbr-{name}",
        internal=name == "sealed",
    )
    return net.to_json()


def _endpoint(container: int, network: str, host: int) -> Endpoint:
    return Endpoint(
        id=f"c{container}-{network}",
        network=network,
        container_id=f"c{container}",
        container_name=f"box{container}",
        interface="eth0",
        host_veth="cvx",
        mac="02:00:00:00:00:01",
        ipv4=ipaddress.IPv4Address(SUBNETS[network] + str(host)),
    )


class Scoped:
    def __init__(self) -> None:
        self.feed = Feed()
        self.view = DnsView()
        self.responder = Responder(
            self.view, EndpointServices("node1", ()), ResponseCache(), AnswerConfig(), seed=1
        )
        for net in NETS:
            self.view.apply(self.feed.put("networks/" + net, _network(net)))
        self.responder.rebuild_scopes(NETS)

    def apply(self, event: Event) -> None:
        # What DnsService does for an endpoint event.
        deps, old, new = self.view.apply(event)
        self.responder.cache.invalidate(deps)
        changes: dict[str, dict[str, Scope | None]] = {}
        for net, addr in self.view.touched_sources(old, new):
            changes.setdefault(net, {})[str(addr)] = self.view.source_scope(net, addr)
        self.responder.update_scopes(changes)

    def attach(self, ep: Endpoint) -> None:
        self.apply(self.feed.put(f"endpoints/{ep.network}/{ep.id}", ep.to_json()))

    def detach(self, ep: Endpoint) -> None:
        self.apply(self.feed.delete(f"endpoints/{ep.network}/{ep.id}"))

    def scopes(self) -> dict[str, dict[str, Scope]]:
        return {
            net: {src: scope for src, (scope, _) in per.items()}
            for net, per in self.responder.src_scopes.items()
        }

    def rebuilt(self) -> dict[str, dict[str, Scope]]:
        return {net: self.view.source_scopes(net) for net in NETS}


def test_patched_scopes_equal_rebuilt_ones_after_any_changes() -> None:
    rng = random.Random(7)
    world = Scoped()
    attached: dict[tuple[int, str], Endpoint] = {}
    for step in range(400):
        container, net = rng.randrange(12), rng.choice(NETS)
        ep = attached.pop((container, net), None)
        if ep is not None and rng.random() < 0.6:
            world.detach(ep)
        else:
            # A new attach, or a re-write of one (new address, same key).
            ep = _endpoint(container, net, 2 + rng.randrange(40))
            world.attach(ep)
            attached[(container, net)] = ep
        assert world.scopes() == world.rebuilt(), step


def test_a_container_sees_a_network_as_soon_as_it_is_attached() -> None:
    world = Scoped()
    web = _endpoint(1, "back", 4)
    world.attach(_endpoint(2, "front", 3))
    world.attach(web)

    def answers(name: str, src: str) -> list[str] | None:
        """The addresses answered; None: not ours to answer (forwarded)."""
        query = dns.message.make_query(name, "A").to_wire()
        out = world.responder.answer(query, "front", src, tcp=False)
        if isinstance(out, ForwardJob):
            return None
        assert isinstance(out, bytes)
        return [r.to_text() for rrset in dns.message.from_wire(out).answer for r in rrset]

    assert answers("box1", "10.89.0.3") is None
    world.attach(_endpoint(2, "back", 9))
    assert answers("box1", "10.89.0.3") == ["10.90.0.4"]
    world.detach(web)
    assert answers("box1", "10.89.0.3") is None
    # Gone from every network: its old address is no longer a known source.
    assert "10.89.0.3" in world.responder.src_scopes["front"]
    world.detach(_endpoint(2, "front", 3))
    assert "10.89.0.3" not in world.responder.src_scopes["front"]


def test_another_nodes_container_on_a_bridge_network_has_no_name_here() -> None:
    # A bridge network is host-local (as Docker's): in a cluster, a
    # container of another host on a network of the same name is out of
    # this host's reach, so its name must not resolve here; on an overlay
    # network it does.
    import dataclasses

    from cove.model import NetworkDriver

    view = DnsView(node="h1")
    bridge = _network("front")
    overlay = Network.from_json(_network("back"))
    overlay = dataclasses.replace(overlay, driver=NetworkDriver.OVERLAY)
    kvs = [
        KeyValue("networks/front", json.dumps(bridge).encode(), 1, 1, 1),
        KeyValue("networks/back", json.dumps(overlay.to_json()).encode(), 1, 1, 1),
    ]
    eps = {
        "mine": dataclasses.replace(_endpoint(1, "front", 2), node="h1"),
        "theirs": dataclasses.replace(_endpoint(2, "front", 3), node="h2"),
        "legacy": _endpoint(3, "front", 4),  # no node: a record of this host's
        "spanning": dataclasses.replace(_endpoint(4, "back", 5), node="h2"),
    }
    for key, ep in eps.items():
        kvs.append(KeyValue(f"endpoints/x/{key}", json.dumps(ep.to_json()).encode(), 2, 2, 1))
    view.load(kvs)
    assert set(view.names["front"]) >= {"box1", "box3"}
    assert "box2" not in view.names["front"]
    assert "box4" in view.names["back"]
    assert eps["theirs"].ipv4 not in view.addrs
    # An update that moves it here (it never does) or a store of one host:
    alone = DnsView()
    alone.load(kvs)
    assert "box2" in alone.names["front"]
