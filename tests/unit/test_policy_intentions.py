"""Intentions in the compiled policy (pure): precedence, the decision
``policy test`` explains, open networks, and the counters read back."""

from __future__ import annotations

import ipaddress

import pytest

from cove.errors import InvalidArgument
from cove.model import Network, Subnet
from cove.policy import compile as pc
from cove.policy import intentions as pi
from cove.policy.model import L4

A = ipaddress.ip_address


def _net(name: str, cidr: str, deny: bool) -> Network:
    net = ipaddress.ip_network(cidr)
    return Network(
        id=name,
        name=name,
        bridge="b" + name,
        default_deny=deny,
        subnets=(Subnet(net, next(net.hosts())),),
    )


MEMBERS = [
    pc.Member("web", "dn", (A("10.1.0.11"),)),
    pc.Member("db", "dn", (A("10.1.0.12"),)),
    pc.Member("other", "dn", (A("10.1.0.13"),)),
    pc.Member("cache", "on", (A("10.2.0.14"),)),
]
INSTANCES = {
    "web": {A("10.1.0.11")},
    "db": {A("10.1.0.12"), A("192.0.2.9")},  # the second is no container: ignored
    "other": {A("10.1.0.13")},
    "cache": {A("10.2.0.14")},
}


def _ixn(src: str, dst: str, action: str, iid: str) -> pi.Intention:
    return pi.Intention(id=iid, source=src, dest=dst, action=action)


def _model(*ixns: pi.Intention) -> pc.Model:
    nets = [_net("dn", "10.1.0.0/24", True), _net("on", "10.2.0.0/24", False)]
    return pc.build(nets, MEMBERS, [], ixns, INSTANCES)


def _decide(model: pc.Model, src: str, dst: str) -> pc.Decision:
    return pc.decide(model, A(src), A(dst), L4.TCP, 80)


def test_exact_beats_wildcard_and_the_reason_names_the_intention() -> None:
    model = _model(_ixn("*", "db", "deny", "i-wild"), _ixn("web", "db", "allow", "i-exact"))
    d = _decide(model, "10.1.0.11", "10.1.0.12")
    assert d.allowed and d.intention == "i-exact"
    assert d.reason == "allowed by intention web => db (id i-exact, precedence 9)"
    d = _decide(model, "10.1.0.13", "10.1.0.12")
    assert not d.allowed and d.intention == "i-wild"
    # No intention for the pair: the network's default deny.
    d = _decide(model, "10.1.0.12", "10.1.0.11")
    assert not d.allowed and d.intention is None and "denied by default" in d.reason
    assert [r.intention.id for r in model.intentions] == ["i-exact", "i-wild"]
    assert model.intentions[0].dests == (("dn", frozenset({A("10.1.0.12")})),)


def test_deny_intention_blocks_on_an_open_network() -> None:
    model = _model(_ixn("web", "cache", "deny", "i-d"))
    assert not _decide(model, "10.1.0.11", "10.2.0.14").allowed
    assert _decide(model, "10.1.0.13", "10.2.0.14").allowed
    objs = pc.compile_table(model)
    comments = [o["rule"].get("comment") for o in objs if "rule" in o]
    assert comments.count("intention i-d deny on") == 2  # TCP reset, ICMP else
    assert "default deny dn" in comments and comments[-2] == "default deny"


def test_precedence_table() -> None:
    assert [pi.precedence(s, d) for s, d in (("a", "b"), ("*", "b"), ("a", "*"), ("*", "*"))] == [
        9,
        8,
        6,
        5,
    ]


def test_bad_bodies_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="'allow' or 'deny'"):
        pi.parse_body({"SourceName": "a", "DestinationName": "b", "Action": "permit"})
    with pytest.raises(InvalidArgument, match="partial wildcards"):
        pi.parse_body({"SourceName": "a*", "DestinationName": "b", "Action": "allow"})
    with pytest.raises(InvalidArgument, match="namespaces"):
        pi.parse_body(
            {"SourceName": "a", "DestinationName": "b", "Action": "allow", "SourceNS": "x"}
        )


def test_counters_are_summed_per_network_and_rule() -> None:
    def rule(comment: str, packets: int) -> dict[str, object]:
        expr = [{"counter": {"packets": packets, "bytes": 60 * packets}}, {"reject": None}]
        return {"rule": {"comment": comment, "expr": expr}}

    listed = [
        rule("default deny dn", 3),
        rule("intention i-d deny on", 2),
        rule("intention i-d deny on", 1),
        rule("intention i-a allow dn", 5),
        rule("default deny", 9),  # the total: not per network
        rule("rule r1", 4),
        {"chain": {"name": "ingress"}},
    ]
    assert pc.counters(listed) == [
        pc.Count("dn", "default", "deny", 3),
        pc.Count("dn", "intention:i-a", "allow", 5),
        pc.Count("on", "intention:i-d", "deny", 3),
    ]


def test_service_rules_grant_intentions_as_consul_does() -> None:
    from cove.acl import Access, Authorizer
    from cove.acl.rules import parse

    rules = parse(
        'service "db" { policy = "read"\n intentions = "write" }\n'
        'service "web" { policy = "write" }\n'
        'service_prefix "" { policy = "deny" }'
    )
    authz = Authorizer([rules], default_allow=True)
    assert authz.allowed("intention", "db", Access.WRITE)
    assert authz.allowed("intention", "web", Access.READ)
    assert not authz.allowed("intention", "web", Access.WRITE)
    assert not authz.allowed("intention", "*", Access.READ)
    with pytest.raises(InvalidArgument, match="intentions policy 'list'"):
        parse('service "db" { policy = "read"\n intentions = "list" }')
