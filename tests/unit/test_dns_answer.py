"""What cove answers, per scope, computed without sockets (Responder over a
view loaded from a memory store)."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import pytest

from cove.clock import ManualClock
from cove.dns.answer import AnswerConfig
from cove.dns.cache import ResponseCache
from cove.dns.responder import ForwardJob, Responder
from cove.dns.services import EndpointServices
from cove.dns.testing import put_endpoint, put_network
from cove.dns.view import DnsView
from cove.store.memory import MemoryStore


class World:
    def __init__(self, a_limit: int = 0) -> None:
        self.store = MemoryStore(ManualClock())
        put_network(self.store, "vnet", "10.89.0.0/24", ipv6="fd00:89::/64")
        put_network(self.store, "back", "10.90.0.0/24")
        put_network(self.store, "sealed", "10.91.0.0/24", internal=True)
        put_endpoint(self.store, "vnet", "redis", "10.89.0.3", ipv6="fd00:89::3", aliases=["cache"])
        put_endpoint(self.store, "vnet", "web", "10.89.0.4", services=["web:8080"])
        put_endpoint(self.store, "back", "web", "10.90.0.4", container_id="cid-web")
        put_endpoint(self.store, "back", "db", "10.90.0.5")
        put_endpoint(self.store, "vnet", "web2", "10.89.0.6", services=["web:8081"])
        put_endpoint(self.store, "sealed", "vault", "10.91.0.2")
        self.view = DnsView()
        self.cache = ResponseCache()
        self.services = EndpointServices("node1", ())
        self.view.load(self.store.range("").kvs)
        for key, ep in self.view.endpoints.items():
            self.services.update(key, ep)
        self.responder = Responder(
            self.view, self.services, self.cache, AnswerConfig(), a_limit=a_limit, seed=1
        )
        self.responder.rebuild_scopes({"vnet", "back", "sealed"})

    def ask(
        self, name: str, rdtype: str = "A", *, net: str | None = None, src: str = "127.0.0.1"
    ) -> dns.message.Message | ForwardJob:
        data = dns.message.make_query(name, rdtype).to_wire()
        out = self.responder.answer(data, net, src, tcp=False)
        assert out is not None
        if isinstance(out, ForwardJob):
            return out
        return dns.message.from_wire(out)


def _addrs(msg: dns.message.Message | ForwardJob) -> list[str]:
    assert isinstance(msg, dns.message.Message)
    return sorted(r.to_text() for rrset in msg.answer for r in rrset)


def _rcode(msg: dns.message.Message | ForwardJob) -> int:
    assert isinstance(msg, dns.message.Message)
    return msg.rcode()


@pytest.fixture
def world() -> World:
    return World()


def test_container_sees_names_on_all_its_networks(world: World) -> None:
    for name in ("redis", "REDIS", "cache", "redis.vnet", "redis.vnet.cove", "redis.vnet.consul"):
        assert _addrs(world.ask(name, net="vnet", src="10.89.0.4")) == ["10.89.0.3"], name
    assert _addrs(world.ask("db", net="vnet", src="10.89.0.4")) == ["10.90.0.5"]
    assert _addrs(world.ask("redis", "AAAA", net="vnet", src="10.89.0.4")) == ["fd00:89::3"]


def test_container_does_not_see_networks_it_is_not_on(world: World) -> None:
    # redis is only on vnet: db (on back) is not its business.
    assert isinstance(world.ask("db", net="vnet", src="10.89.0.3"), ForwardJob)
    assert isinstance(world.ask("db.back", net="vnet", src="10.89.0.3"), ForwardJob)
    assert _rcode(world.ask("db.back.cove", net="vnet", src="10.89.0.3")) == dns.rcode.NXDOMAIN


def test_source_on_none_of_the_listeners_networks_is_refused(world: World) -> None:
    assert _rcode(world.ask("redis", net="vnet", src="10.90.0.5")) == dns.rcode.REFUSED
    assert _rcode(world.ask("redis", net="vnet", src="192.0.2.1")) == dns.rcode.REFUSED


def test_unregistered_source_inside_the_subnet_sees_that_network(world: World) -> None:
    assert _addrs(world.ask("redis", net="vnet", src="10.89.0.77")) == ["10.89.0.3"]


def test_host_listener_sees_every_network_only_with_the_domain(world: World) -> None:
    assert _addrs(world.ask("db.back.cove")) == ["10.90.0.5"]
    assert _addrs(world.ask("vault.sealed.cove")) == ["10.91.0.2"]
    assert isinstance(world.ask("redis"), ForwardJob)
    assert isinstance(world.ask("example.com"), ForwardJob)


def test_internal_network_never_forwards(world: World) -> None:
    assert _rcode(world.ask("example.com", net="sealed", src="10.91.0.2")) == dns.rcode.REFUSED
    assert _addrs(world.ask("vault", net="sealed", src="10.91.0.2")) == ["10.91.0.2"]


def test_unknown_name_is_nxdomain_and_known_name_without_type_is_nodata_with_soa(
    world: World,
) -> None:
    nx = world.ask("nobody.vnet.cove")
    assert isinstance(nx, dns.message.Message)
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.flags & dns.flags.AA
    assert nx.authority[0].rdtype == dns.rdatatype.SOA
    nodata = world.ask("db.back.cove", "AAAA")
    assert isinstance(nodata, dns.message.Message)
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA


def test_services_return_passing_instances_in_consul_forms(world: World) -> None:
    assert _addrs(world.ask("web.service.cove")) == ["10.89.0.4", "10.89.0.6"]
    srv = world.ask("_web._tcp.service.consul", "SRV")
    assert isinstance(srv, dns.message.Message)
    ports = sorted(r.port for r in srv.answer[0])
    assert ports == [8080, 8081]
    extra = sorted(r.address for rrset in srv.additional for r in rrset)
    assert extra == ["10.89.0.4", "10.89.0.6"]
    targets = {str(r.target) for r in srv.answer[0]}
    assert {str(rrset.name) for rrset in srv.additional} == targets
    assert _addrs(world.ask(next(iter(targets)))) in (["10.89.0.4"], ["10.89.0.6"])
    assert _rcode(world.ask("nope.service.cove")) == dns.rcode.NXDOMAIN
    assert _addrs(world.ask("node1.node.cove")) == []  # the node has no address here


def test_ptr_for_container_addresses(world: World) -> None:
    host = world.ask("3.0.89.10.in-addr.arpa", "PTR")
    assert _addrs(host) == ["redis.vnet.cove."]
    inside = world.ask("3.0.89.10.in-addr.arpa", "PTR", net="vnet", src="10.89.0.4")
    assert _addrs(inside) == ["redis.vnet."]
    v6 = world.ask(
        "3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.9.8.0.0.0.0.d.f.ip6.arpa", "PTR"
    )
    assert _addrs(v6) == ["redis.vnet.cove."]
    assert _rcode(world.ask("99.0.89.10.in-addr.arpa", "PTR")) == dns.rcode.NXDOMAIN
    assert isinstance(world.ask("1.1.168.192.in-addr.arpa", "PTR"), ForwardJob)


def test_answers_are_shuffled_and_limited() -> None:
    world = World(a_limit=1)
    for i in range(7, 13):
        put_endpoint(world.store, "vnet", f"rep{i}", f"10.89.0.{i}", aliases=["rep"])
    world.view.load(world.store.range("").kvs)
    seen = set()
    for _ in range(40):
        addrs = _addrs(world.ask("rep.vnet.cove"))
        assert len(addrs) == 1
        seen.update(addrs)
    assert len(seen) > 1


def test_cache_is_invalidated_exactly_by_dependencies(world: World) -> None:
    assert _addrs(world.ask("redis.vnet.cove")) == ["10.89.0.3"]
    assert _addrs(world.ask("db.back.cove")) == ["10.90.0.5"]
    size = len(world.cache)
    put_endpoint(world.store, "vnet", "redis", "10.89.0.33")
    event = world.store.watch("", 1).next(0)[-1]
    with world.responder.view_lock:
        deps, _, _ = world.view.apply(event)
    world.cache.invalidate(deps)
    assert len(world.cache) == size - 1  # db's answer stays
    assert _addrs(world.ask("redis.vnet.cove")) == ["10.89.0.33"]


def test_mixed_case_question_is_echoed_from_the_cache(world: World) -> None:
    world.ask("redis.vnet.cove")
    msg = world.ask("ReDiS.VnEt.CoVe")
    assert isinstance(msg, dns.message.Message)
    assert str(msg.question[0].name) == "ReDiS.VnEt.CoVe."
    assert _addrs(msg) == ["10.89.0.3"]
