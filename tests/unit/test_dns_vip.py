"""Service VIPs in DNS: ``<svc>.service`` answers the VIP, SRV keeps the
instances, answers follow ``lb/vips/`` at once, and registry service names
are matched case-insensitively.

The first tests run the Responder over a view (no sockets); the others run a
``DnsService`` on a free loopback port and ask it with dnspython."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from cove.clock import ManualClock, SystemClock
from cove.dns import DnsConfig, DnsService
from cove.dns.answer import AnswerConfig
from cove.dns.cache import ResponseCache
from cove.dns.registry_source import RegistryServices
from cove.dns.responder import Responder
from cove.dns.services import ChangeCallback, Node, ServiceInstance
from cove.dns.testing import put_endpoint, put_network
from cove.dns.view import DnsView, svc_dep
from cove.lb.model import VIPS, Vip
from cove.registry import Registry, Status
from cove.store.base import Event, EventType, KeyValue, Store
from cove.store.hub import WatchHub
from cove.store.memory import MemoryStore

HOST = "127.0.0.1"


def put_vip(store: Store, service: str, address: str) -> None:
    vip = Vip(service, ipaddress.ip_address(address))
    store.put(VIPS + service, json.dumps(vip.to_json()).encode())


def _instance(service: str, iid: str, addr: str, port: int, *tags: str) -> ServiceInstance:
    return ServiceInstance(service, iid, "node1", ipaddress.ip_address(addr), port, tags)


class Instances:
    """A fixed ``ServiceSource`` (pure answer logic needs no registry)."""

    def __init__(self, *instances: ServiceInstance) -> None:
        self.instances = list(instances)

    def passing(self, service: str) -> Sequence[ServiceInstance]:
        return [i for i in self.instances if i.service == service]

    def node(self, name: str) -> Node | None:
        return None

    def subscribe(self, callback: ChangeCallback) -> None:
        pass


class World:
    def __init__(self, *instances: ServiceInstance) -> None:
        self.store = MemoryStore(ManualClock())
        put_network(self.store, "vnet", "10.89.0.0/24")
        put_endpoint(self.store, "vnet", "client", "10.89.0.9")
        self.services = Instances(*instances)

    def ask(
        self, name: str, rdtype: str = "A", *, net: str | None = None, src: str = HOST
    ) -> dns.message.Message:
        # A fresh view and cache per question: the store is the only input.
        view = DnsView()
        view.load(self.store.range("").kvs)
        responder = Responder(view, self.services, ResponseCache(), AnswerConfig(), seed=1)
        responder.rebuild_scopes({"vnet"})
        out = responder.answer(dns.message.make_query(name, rdtype).to_wire(), net, src, tcp=False)
        assert isinstance(out, bytes)
        return dns.message.from_wire(out)


def _texts(msg: dns.message.Message, section: str = "answer") -> list[str]:
    rrsets = getattr(msg, section)
    return sorted(r.to_text() for rrset in rrsets for r in rrset)


WEB = (
    _instance("web", "web-1", "10.89.0.4", 8080, "v1"),
    _instance("web", "web-2", "10.89.0.5", 8081),
)


def test_plain_name_answers_the_vip_srv_the_instances() -> None:
    world = World(*WEB)
    assert _texts(world.ask("web.service.cove")) == ["10.89.0.4", "10.89.0.5"]
    put_vip(world.store, "web", "10.96.0.10")
    assert _texts(world.ask("web.service.cove")) == ["10.96.0.10"]
    assert _texts(world.ask("WEB.service.consul")) == ["10.96.0.10"]
    assert _texts(world.ask("web.service.cove", "ANY")) == ["10.96.0.10"]
    for name in ("_web._tcp.service.cove", "web.service.cove"):
        srv = world.ask(name, "SRV")
        assert _texts(srv) == [
            "1 1 8080 0a590004.addr.cove.",
            "1 1 8081 0a590005.addr.cove.",
        ], name
        assert _texts(srv, "additional") == ["10.89.0.4", "10.89.0.5"], name
    # A tag picks instances: the VIP spreads over all of them.
    assert _texts(world.ask("v1.web.service.cove")) == ["10.89.0.4"]
    assert _texts(world.ask("_web._v1.service.cove", "SRV")) == ["1 1 8080 0a590004.addr.cove."]


def test_vip_answers_in_a_container_scope_too() -> None:
    world = World(*WEB)
    put_vip(world.store, "web", "10.96.0.10")
    assert _texts(world.ask("web.service.cove", net="vnet", src="10.89.0.9")) == ["10.96.0.10"]


def test_vip_family_decides_a_and_aaaa() -> None:
    world = World(*WEB, _instance("web", "web-3", "fd00:89::6", 8080))
    put_vip(world.store, "web", "10.96.0.10")
    msg = world.ask("web.service.cove", "AAAA")
    assert msg.rcode() == dns.rcode.NOERROR and _texts(msg) == []  # NODATA, no instance leaks
    put_vip(world.store, "web", "fd00:96::10")
    assert _texts(world.ask("web.service.cove", "AAAA")) == ["fd00:96::10"]
    msg = world.ask("web.service.cove", "A")
    assert msg.rcode() == dns.rcode.NOERROR and _texts(msg) == []


def test_vip_without_passing_instances_still_answers() -> None:
    # Like kube DNS: the name stays; the kernel rejects connections to a VIP
    # with no backend at once, rather than clients caching an NXDOMAIN.
    world = World()
    assert world.ask("web.service.cove").rcode() == dns.rcode.NXDOMAIN
    put_vip(world.store, "web", "10.96.0.10")
    assert _texts(world.ask("web.service.cove")) == ["10.96.0.10"]
    srv = world.ask("web.service.cove", "SRV")
    assert srv.rcode() == dns.rcode.NOERROR and _texts(srv) == []
    assert world.ask("_web._tcp.service.cove", "SRV").rcode() == dns.rcode.NXDOMAIN


def test_malformed_vip_record_is_ignored() -> None:
    world = World(*WEB)
    put_vip(world.store, "web", "10.96.0.10")
    world.store.put(VIPS + "web", b'{"service": "web", "address": "not an ip"}')
    assert _texts(world.ask("web.service.cove")) == ["10.89.0.4", "10.89.0.5"]
    world.store.put(VIPS + "web", b"[1, 2]")
    assert _texts(world.ask("web.service.cove")) == ["10.89.0.4", "10.89.0.5"]


def test_vip_events_touch_only_their_service() -> None:
    view = DnsView()
    vip = json.dumps(Vip("web", ipaddress.ip_address("10.96.0.10")).to_json()).encode()
    touched, _, _ = view.apply(Event(EventType.PUT, KeyValue(VIPS + "web", vip, 2, 2, 1)))
    assert touched == {svc_dep("web")}
    assert view.vips == {"web": ipaddress.ip_address("10.96.0.10")}
    touched, _, _ = view.apply(Event(EventType.DELETE, KeyValue(VIPS + "web", b"", 2, 3, 0)))
    assert touched == {svc_dep("web")} and view.vips == {}


# -- through a running DnsService ------------------------------------------------


def _ask(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), HOST, port=port, timeout=2)


T = TypeVar("T")


def _until(check: Callable[[], T], want: T, seconds: float, what: str) -> T:
    deadline = time.monotonic() + seconds
    while (got := check()) != want:
        assert time.monotonic() < deadline, f"{what}: {got}, not {want}, after {seconds}s"
        time.sleep(0.002)
    return got


def _cache_hits(svc: DnsService) -> float:
    return {name: value for name, _, value in svc.metrics()}["cove_dns_udp_cached_total"]


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    store = MemoryStore(SystemClock())
    yield store
    store.close()


def test_answers_follow_the_vip_key(store: MemoryStore) -> None:
    put_network(store, "vnet", "10.89.0.0/24")
    put_endpoint(store, "vnet", "web", "10.89.0.4", services=["web:8080"])
    put_endpoint(store, "vnet", "web2", "10.89.0.5", services=["web:8081"])
    put_vip(store, "web", "10.96.0.10")  # before start: loaded, not followed
    hub = WatchHub(store)
    hub.start()
    svc = DnsService(store, SystemClock(), DnsConfig(host_port=0), upstreams=lambda: (), hub=hub)
    svc.start()
    port = svc.host_port

    def addrs() -> list[str]:
        return _texts(_ask(port, "web.service.cove"))

    try:
        assert addrs() == ["10.96.0.10"]
        srv = _ask(port, "_web._tcp.service.cove", "SRV")
        assert sorted(r.port for rrset in srv.answer for r in rrset) == [8080, 8081]
        assert _texts(srv, "additional") == ["10.89.0.4", "10.89.0.5"]

        # The cached answer must go: without the invalidation it would never
        # change (the cache has no expiry). How fast is a benchmark's
        # business (p99 8 ms measured); the deadline here only bounds a hang.
        put_vip(store, "web", "10.96.0.11")
        _until(addrs, ["10.96.0.11"], 5, "after the VIP changed")

        store.delete(VIPS + "web")
        _until(addrs, ["10.89.0.4", "10.89.0.5"], 5, "after the VIP was removed")
        put_vip(store, "web", "10.96.0.12")
        _until(addrs, ["10.96.0.12"], 5, "after a VIP was given")
        # Another service's VIP answers itself and leaves web's cached
        # answer alone: web is still answered from the hot path.
        assert addrs() == ["10.96.0.12"]
        put_vip(store, "db", "10.96.0.20")
        _until(lambda: _texts(_ask(port, "db.service.cove")), ["10.96.0.20"], 5, "db")
        hits = _cache_hits(svc)
        assert addrs() == ["10.96.0.12"]
        # The server counts a batch's hits after sending its answers: wait
        # for the count rather than racing it.
        _until(lambda: _cache_hits(svc), hits + 1, 2, "the cache hit to be counted")
    finally:
        svc.stop()
        hub.stop()


def test_registry_service_names_are_case_insensitive(store: MemoryStore) -> None:
    hub = WatchHub(store)
    hub.start()
    registry = Registry(store, SystemClock(), "node1", node_address="10.1.0.1")
    registry.catalog.ensure_node()  # serfHealth passing: the node is alive
    source = RegistryServices(registry.queries, hub)
    svc = DnsService(
        store, SystemClock(), DnsConfig(host_port=0), hub=hub, services=source, upstreams=lambda: ()
    )
    svc.start()
    port = svc.host_port

    def addrs(name: str = "web.service.cove") -> list[str]:
        return _texts(_ask(port, name))

    try:
        assert _ask(port, "web.service.cove").rcode() == dns.rcode.NXDOMAIN  # now cached
        registry.register_container("web-1", "Web", "10.1.0.5", 8080, tags=["Blue"])
        registry.catalog.update_check("service:web-1", Status.PASSING, "ok")
        _until(addrs, ["10.1.0.5"], 5, "Web registered")
        assert addrs("WEB.service.cove") == ["10.1.0.5"]
        assert addrs("blue.web.service.cove") == ["10.1.0.5"]
        srv = _ask(port, "_web._tcp.service.cove", "SRV")
        assert _texts(srv) == ["1 1 8080 0a010005.addr.cove."]

        # Both spellings in use: one service to DNS, as in Consul.
        registry.register_container("web-2", "web", "10.1.0.6", 8080)
        registry.catalog.update_check("service:web-2", Status.PASSING, "ok")
        _until(addrs, ["10.1.0.5", "10.1.0.6"], 5, "web registered as well")

        put_vip(store, "web", "10.96.0.10")  # VipService keys names lower-case
        _until(addrs, ["10.96.0.10"], 5, "the VIP")
        store.delete(VIPS + "web")
        _until(addrs, ["10.1.0.5", "10.1.0.6"], 5, "the VIP removed")

        registry.deregister_container("web-1")
        _until(addrs, ["10.1.0.6"], 5, "Web deregistered")
        registry.deregister_container("web-2")
        _until(addrs, [], 5, "web deregistered")
        assert _ask(port, "web.service.cove").rcode() == dns.rcode.NXDOMAIN
    finally:
        svc.stop()
        hub.stop()


def test_registry_source_finds_spellings_registered_before_it(store: MemoryStore) -> None:
    hub = WatchHub(store)
    registry = Registry(store, SystemClock(), "node1", node_address="10.1.0.1")
    registry.catalog.ensure_node()
    registry.register_container("api-1", "API", "10.1.0.7", 9090)
    registry.catalog.update_check("service:api-1", Status.PASSING, "ok")
    source = RegistryServices(registry.queries, hub)
    assert [(i.service, str(i.address), i.port) for i in source.passing("api")] == [
        ("api", "10.1.0.7", 9090)
    ]
    assert source.passing("web") == []
