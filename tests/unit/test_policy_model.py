"""Policy selectors, ports, the pure decision and the service's validation."""

from __future__ import annotations

import ipaddress
import json

import pytest

from cove.clock import ManualClock
from cove.errors import InvalidArgument, NotFound
from cove.model import Endpoint, Network, Subnet
from cove.policy import compile as pc
from cove.policy.model import L4, RULES, PortSpec, Rule, Selector, SelectorKind
from cove.policy.service import PolicyService
from cove.store import MemoryStore


def test_selectors_parse_and_print_back() -> None:
    for text in ("*", "web", "container:web", "service:db", "app=web,tier=front"):
        assert str(Selector.parse(text)) == text
    assert Selector.parse("app=web").kind is SelectorKind.LABELS
    assert Selector.parse("Web").value == "web"
    for bad in ("", "pod:web", "=x", "a b", "container:"):
        with pytest.raises(InvalidArgument):
            Selector.parse(bad)


def test_ports_parse() -> None:
    assert PortSpec.parse("80") == PortSpec(80, 80, L4.TCP)
    assert PortSpec.parse("53/udp") == PortSpec(53, 53, L4.UDP)
    assert str(PortSpec.parse("8000-8100/TCP")) == "8000-8100/tcp"
    for bad in ("0", "70000", "80/sctp", "x", "90-80"):
        with pytest.raises(InvalidArgument):
            PortSpec.parse(bad)


def net(name: str, cidr: str, deny: bool) -> Network:
    n = ipaddress.ip_network(cidr)
    return Network(
        id=name, name=name, bridge=f"cv-{name}", default_deny=deny,
        subnets=(Subnet(n, next(n.hosts())),),
    )  # fmt: skip


def member(
    name: str, network: str, addr: str, services: tuple[str, ...] = (), **labels: str
) -> pc.Member:
    return pc.Member(name, network, (ipaddress.ip_address(addr),), frozenset(services), labels)


def rule(rid: str, network: str, src: str, dst: str, *ports: str) -> Rule:
    return Rule(
        rid,
        network,
        Selector.parse(src),
        Selector.parse(dst),
        tuple(PortSpec.parse(p) for p in ports),
    )


IP = ipaddress.ip_address


def test_decide_explains_every_outcome() -> None:
    nets = [net("a", "10.1.0.0/24", True), net("b", "10.2.0.0/24", False)]
    members = [
        member("web", "a", "10.1.0.2", ("web",), app="web"),
        member("db", "a", "10.1.0.3", ("db",), app="db"),
        member("other", "b", "10.2.0.2"),
    ]
    model = pc.build(nets, members, [rule("r1", "a", "app=web", "service:db", "5432")])
    d = pc.decide(model, IP("10.1.0.2"), IP("10.1.0.3"), L4.TCP, 5432)
    assert d.allowed and d.rule == "r1"
    d = pc.decide(model, IP("10.1.0.2"), IP("10.1.0.3"), L4.TCP, 22)
    assert not d.allowed and "denied by default on network 'a'" in d.reason
    assert not pc.decide(model, IP("10.1.0.3"), IP("10.1.0.2"), L4.TCP, 5432).allowed
    assert not pc.decide(model, IP("10.2.0.2"), IP("10.1.0.3"), L4.TCP, 5432).allowed
    assert pc.decide(model, IP("10.1.0.3"), IP("10.2.0.2"), L4.TCP, 1).allowed
    # A source that is no cove endpoint is judged, not waved through.
    outside = pc.decide(model, IP("192.0.2.9"), IP("10.1.0.3"), L4.TCP, 1)
    assert not outside.allowed and "only published ports" in outside.reason


def test_a_name_is_a_container_first_then_a_service() -> None:
    members = [member("db", "a", "10.1.0.3"), member("x", "a", "10.1.0.4", ("db",))]
    assert [m.name for m in pc.select(Selector.parse("db"), members)] == ["db"]
    assert [m.name for m in pc.select(Selector.parse("service:db"), members)] == ["x"]


def test_compiled_table_has_one_accept_per_resolved_rule_and_skips_empty_ones() -> None:
    nets = [net("a", "10.1.0.0/24", True)]
    members = [member("web", "a", "10.1.0.2", app="web"), member("db", "a", "10.1.0.3")]
    model = pc.build(
        nets,
        members,
        [rule("r1", "a", "app=web", "db", "5432", "53/udp"), rule("r2", "a", "app=none", "db")],
    )
    objs = pc.compile_table(model)
    comments = [o["rule"].get("comment") for o in objs if "rule" in o]
    assert comments.count("rule r1") == 2  # one per protocol
    assert "rule r2" not in comments
    assert comments[-2] == "default deny"


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore(ManualClock())
    s.put("networks/a", json.dumps(net("a", "10.1.0.0/24", True).to_json()).encode())
    for name, addr, services in (("web", "10.1.0.2", ("web:80",)), ("db", "10.1.0.3", ())):
        ep = Endpoint(
            id=name, network="a", container_id=name, container_name=name, interface="eth0",
            host_veth="", mac="", ipv4=ipaddress.IPv4Address(addr), services=services,
        )  # fmt: skip
        s.put(f"endpoints/a/{name}", json.dumps(ep.to_json()).encode())
    s.put("containers/db", json.dumps({"name": "db", "labels": {"app": "db"}}).encode())
    return s


def test_service_refuses_bad_input_and_writes_nothing(store: MemoryStore) -> None:
    policy = PolicyService(store, ManualClock())
    before = store.revision
    with pytest.raises(NotFound):
        policy.allow("nope", "web", "db")
    with pytest.raises(InvalidArgument, match="unknown selector 'wbe'"):
        policy.allow("a", "wbe", "db")
    with pytest.raises(InvalidArgument):
        policy.allow("a", "web", "db", ["80/icmp"])
    with pytest.raises(InvalidArgument):
        policy.allow("a", "pod:web", "db")
    assert store.revision == before
    assert not store.range(RULES).kvs
    # Names of things that come later are fine when spelled out.
    policy.allow("a", "container:later", "db")


def test_service_test_and_default_deny_switch(store: MemoryStore) -> None:
    policy = PolicyService(store, ManualClock())
    r = policy.allow("a", "web", "app=db", ["5432"])
    (v,) = policy.test("web", "db", "5432")
    assert v.decision.allowed and v.decision.rule == r.id
    (v,) = policy.test("db", "web", "80")
    assert not v.decision.allowed
    assert policy.set_default_deny("a", False).default_deny is False
    (v,) = policy.test("db", "web", "80")
    assert v.decision.allowed and "does not deny" in v.decision.reason
    with pytest.raises(InvalidArgument, match="matches no container"):
        policy.test("ghost", "web", "80")
    policy.remove(r.id)
    with pytest.raises(NotFound):
        policy.remove(r.id)
    assert policy.rules() == []


def test_a_container_reaches_itself_even_on_a_default_deny_network() -> None:
    model = pc.build([net("a", "10.1.0.0/24", True)], [member("web", "a", "10.1.0.2")], [])
    assert pc.decide(model, IP("10.1.0.2"), IP("10.1.0.2"), L4.TCP, 80).allowed
    assert not pc.decide(model, IP("10.1.0.9"), IP("10.1.0.2"), L4.TCP, 80).allowed
    elems = [o["element"] for o in pc.compile_table(model) if "element" in o]
    assert {"name": "self_v4", "elem": [{"concat": ["10.1.0.2", "10.1.0.2"]}]} in elems


def test_members_take_labels_from_endpoints_and_only_their_own_nodes_records() -> None:
    """An endpoint carries its container's labels (no read of a container
    record under another node's keys); an older endpoint without them gets
    its container's from a record of the node the service reads, else none."""
    s = MemoryStore(ManualClock())

    def endpoint(name: str, addr: str, node: str, labels: dict[str, str]) -> None:
        ep = Endpoint(
            id=name, network="a", container_id=name, container_name=name, interface="eth0",
            host_veth="", mac="", ipv4=ipaddress.IPv4Address(addr), node=node, labels=labels,
        )  # fmt: skip
        s.put(f"endpoints/a/{name}", json.dumps(ep.to_json()).encode())

    endpoint("api", "10.1.0.2", "h2", {"app": "api"})  # another node's, labelled
    endpoint("old", "10.1.0.3", "h1", {})  # this node's, written before labels
    endpoint("far", "10.1.0.4", "h2", {})  # another node's, written before labels
    for node, name in (("h1", "old"), ("h2", "far"), ("h2", "api")):
        record = {"name": name, "labels": {"app": f"{name}-record"}}
        s.put(f"containers/{node}/{name}", json.dumps(record).encode())
    got = {m.name: dict(m.labels) for m in PolicyService(s, ManualClock(), "h1").members()}
    assert got == {"api": {"app": "api"}, "old": {"app": "old-record"}, "far": {}}
    # The labels go through the endpoint's JSON; a record without them reads as none.
    ep = Endpoint.from_json(json.loads(s.get("endpoints/a/api").value))  # type: ignore[union-attr]
    assert ep.labels == {"app": "api"}
    legacy = json.loads(s.get("endpoints/a/old").value)  # type: ignore[union-attr]
    del legacy["labels"]
    assert Endpoint.from_json(legacy).labels == {}
