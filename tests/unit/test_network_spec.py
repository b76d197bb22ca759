"""Network validation and subnet selection (pure)."""

from __future__ import annotations

import ipaddress

import pytest

from cove.errors import Conflict, InvalidArgument
from cove.network.spec import NetworkSpec, build_network


def build(taken=(), host=(), **kw):  # type: ignore[no-untyped-def]
    taken_list = [(n, ipaddress.ip_network(s)) for n, s in taken]
    return build_network(
        NetworkSpec(**kw), taken_list, [ipaddress.ip_network(h) for h in host], 0.0
    )


def test_defaults_pick_a_free_subnet_and_first_gateway() -> None:
    n = build(name="vnet", taken=[("a", "10.89.0.0/24")], host=["10.89.1.0/24"])
    assert n.ipv4 is not None
    assert str(n.ipv4.cidr) == "10.89.2.0/24"
    assert str(n.ipv4.gateway) == "10.89.2.1"
    assert n.bridge.startswith("cv-") and len(n.bridge) <= 15


def test_explicit_subnet_gateway_range_and_ipv6() -> None:
    n = build(
        name="v6",
        subnets=["10.1.0.0/24", "fd00:1::/64"],
        gateways=["10.1.0.254"],
        ip_ranges=["10.1.0.128/25"],
        ipv6=True,
        mtu=1400,
        labels={"a": "b"},
    )
    assert n.ipv4 is not None and n.ipv6 is not None
    assert str(n.ipv4.gateway) == "10.1.0.254" and str(n.ipv4.ip_range) == "10.1.0.128/25"
    assert str(n.ipv6.gateway) == "fd00:1::1"
    assert n.mtu == 1400 and n.labels == {"a": "b"}


def test_ipv6_flag_alone_gets_a_ula_subnet() -> None:
    n = build(name="v6", ipv6=True)
    assert n.ipv6 is not None and n.ipv6.cidr.is_private and n.ipv6.cidr.prefixlen == 64


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"name": "bad name"}, "invalid network name"),
        ({"name": "bad/name"}, "invalid network name"),
        ({"name": "none"}, "reserved"),
        ({"name": "host"}, "reserved"),
        ({"name": "x" * 129}, "at most 128"),
        ({"name": "-x"}, "invalid network name"),
        ({"name": "n", "subnets": ["10.0.0.1/24"]}, "host bits"),
        ({"name": "n", "subnets": ["10.0.0.0/24", "10.1.0.0/24"]}, "at most one IPv4"),
        ({"name": "n", "subnets": ["10.0.0.0/24"], "gateways": ["10.9.0.1"]}, "outside subnet"),
        ({"name": "n", "subnets": ["10.0.0.0/24"], "gateways": ["10.0.0.255"]}, "broadcast"),
        ({"name": "n", "subnets": ["10.0.0.0/24"], "ip_ranges": ["10.1.0.0/25"]}, "not inside"),
        ({"name": "n", "mtu": 20}, "mtu"),
        ({"name": "n", "ipv6": True, "mtu": 1000}, "1280"),
    ],
)
def test_bad_input_is_named(kw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        build(**kw)


def test_overlap_with_another_network_or_host_is_a_conflict() -> None:
    with pytest.raises(Conflict, match="overlaps network a"):
        build(name="n", subnets=["10.89.0.0/16"], taken=[("a", "10.89.3.0/24")])
    with pytest.raises(Conflict, match="host route"):
        build(name="n", subnets=["192.168.0.0/24"], host=["192.168.0.0/16"])


def test_from_json_type_checks() -> None:
    with pytest.raises(InvalidArgument, match="mtu"):
        NetworkSpec.from_json({"name": "n", "mtu": "big"})
    with pytest.raises(InvalidArgument, match="name"):
        NetworkSpec.from_json({"subnets": []})
    with pytest.raises(InvalidArgument, match="internal"):
        NetworkSpec.from_json({"name": "n", "internal": "yes"})
