"""Attach/detach planning for containers: pure, against observed state."""

from __future__ import annotations

import ipaddress

from cove.datapath.base import HostVeth, InsideLink, NetnsState, ObservedContainers
from cove.runtime import plan as p

BR = "cv-0123456789ab"
IF4 = ipaddress.IPv4Interface("10.89.0.2/24")
GW = ipaddress.IPv4Address("10.89.0.1")


def link(
    n: int = 0, veth: str = "cv00000000aa", addr: ipaddress.IPv4Interface = IF4
) -> p.WantedLink:
    return p.WantedLink(
        endpoint_id="aa" * 8,
        host_veth=veth,
        interface=f"eth{n}",
        mac="02:00:00:00:00:01",
        bridge=BR,
        mtu=1500,
        addresses=(addr,),
    )


def want(*links: p.WantedLink) -> p.WantedContainer:
    return p.WantedContainer("c1", links, GW if links else None, None)


def healthy(lk: p.WantedLink) -> ObservedContainers:
    inside = InsideLink(lk.interface, 1500, True, lk.mac, frozenset(lk.addresses))
    return ObservedContainers(
        netns={"c1": NetnsState({lk.interface: inside}, gateway4=GW)},
        veths={lk.host_veth: HostVeth(lk.host_veth, BR, True, 1500)},
    )


def test_new_container_gets_namespace_veth_addresses_and_route() -> None:
    lk = link()
    ops = p.plan([want(lk)], ObservedContainers({}, {}), [])
    assert ops == [
        p.CreateNetns("c1"),
        p.AddVeth("c1", lk),
        p.SetRoutes("c1", GW, None),
    ]


def test_matching_kernel_needs_nothing() -> None:
    lk = link()
    assert p.plan([want(lk)], healthy(lk), ["c1"]) == []


def test_host_veth_without_peer_is_rebuilt() -> None:
    lk = link()
    obs = ObservedContainers(
        netns={"c1": NetnsState({})},
        veths={lk.host_veth: HostVeth(lk.host_veth, BR, True, 1500)},
    )
    ops = p.plan([want(lk)], obs, ["c1"])
    assert ops[:2] == [p.DeleteVeth(lk.host_veth), p.AddVeth("c1", lk)]
    assert ops[-1] == p.SetRoutes("c1", GW, None)


def test_veth_off_its_bridge_is_rebuilt() -> None:
    lk = link()
    obs = healthy(lk)
    obs = ObservedContainers(obs.netns, {lk.host_veth: HostVeth(lk.host_veth, None, True, 1500)})
    ops = p.plan([want(lk)], obs, ["c1"])
    assert p.AddVeth("c1", lk) in ops
    assert p.DeleteVeth(lk.host_veth) in ops


def test_missing_address_is_configured_without_rebuilding() -> None:
    lk = link()
    obs = healthy(lk)
    inside = InsideLink("eth0", 1500, True, lk.mac, frozenset())
    obs = ObservedContainers({"c1": NetnsState({"eth0": inside}, gateway4=GW)}, obs.veths)
    assert p.plan([want(lk)], obs, ["c1"]) == [p.Configure("c1", lk)]


def test_disconnected_interface_is_removed_inside_and_route_moves() -> None:
    lk1 = link(1, "cv00000000bb", ipaddress.IPv4Interface("10.90.0.2/24"))
    obs = healthy(link())
    desired = p.WantedContainer("c1", (lk1,), ipaddress.IPv4Address("10.90.0.1"), None)
    ops = p.plan([desired], obs, ["c1"])
    assert p.DeleteInside("c1", "eth0") in ops
    assert p.DeleteVeth("cv00000000aa") in ops
    assert p.AddVeth("c1", lk1) in ops
    assert ops[-1] == p.SetRoutes("c1", ipaddress.IPv4Address("10.90.0.1"), None)


def test_leftovers_of_removed_containers_are_deleted() -> None:
    lk = link()
    ops = p.plan([], healthy(lk), ["c1", "c2"])
    assert ops == [p.DeleteNetns("c1"), p.DeleteNetns("c2"), p.DeleteVeth(lk.host_veth)]


def test_only_pass_touches_one_container_and_removes_nothing_else() -> None:
    lk = link()
    other = p.WantedContainer("c2", (), None, None)
    ops = p.plan([want(lk), other], ObservedContainers({}, {}), ["zz"], only="c1")
    assert p.DeleteNetns("zz") not in ops
    assert p.CreateNetns("c2") not in ops
    assert ops[0] == p.CreateNetns("c1")


def test_container_on_no_network_still_gets_a_namespace() -> None:
    ops = p.plan([want()], ObservedContainers({}, {}), [])
    assert ops == [p.CreateNetns("c1")]
