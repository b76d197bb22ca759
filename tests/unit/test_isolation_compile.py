"""The pure parts of isolation: the port guard table, the order of the
network table's rules, published-port marks, and the policy table's
treatment of sources outside cove."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace
from typing import Any

from cove.errors import DatapathError
from cove.model import Network, Subnet
from cove.network import firewall
from cove.policy import compile as pc
from cove.policy.model import L4
from cove.runtime import guard, ports
from cove.runtime.plan import WantedContainer, WantedLink
from cove.runtime.portguard import PortGuard, guard_ports
from cove.runtime.spec import PortMapping

Obj = dict[str, Any]


def port(name: str = "cv0123456789", *addrs: str) -> guard.Port:
    ips = [ipaddress.ip_address(a) for a in addrs or ("10.89.0.2",)]
    return guard.Port.of(name, "c1", "0A:58:0A:59:00:02", ips)


def rules(objs: list[Obj], chain: str) -> list[list[Obj]]:
    return [o["rule"]["expr"] for o in objs if "rule" in o and o["rule"]["chain"] == chain]


def test_a_port_is_its_mac_its_addresses_and_its_mac_derived_link_local() -> None:
    p = port("cv0123456789", "10.89.0.2", "fd00:89::2")
    assert p.mac == "0a:58:0a:59:00:02"
    assert p.ipv4 == (ipaddress.IPv4Address("10.89.0.2"),)
    # EUI-64: the universal/local bit flipped, ff:fe in the middle
    assert ipaddress.IPv6Address("fe80::858:aff:fe59:2") in p.ipv6
    assert ipaddress.IPv6Address("fd00:89::2") in p.ipv6


def test_guard_table_guards_listed_ports_and_fails_closed_for_other_container_ports() -> None:
    objs = guard.table_objects([port()])
    pre = rules(objs, "prerouting")
    assert pre[0][-1] == {"jump": {"target": "guard"}}
    # a host veth's name (cv + 10 hex digits) without entries: dropped
    # cove's container veths and CNI attachments' veths alike.
    assert set(pre[1][0]["match"]["right"]["set"]) == {
        f"{p}{d}*" for p in ("cv", "cn") for d in "0123456789abcdef"
    }
    assert pre[1][-1] == {"drop": None}
    g = rules(objs, "guard")
    # the last word is a drop: anything not explicitly its own is refused
    assert g[-1] == [{"drop": None}]
    accepts = [r for r in g if r[-1] == {"accept": None}]
    text = json.dumps(accepts)
    # IPv4 and IPv6 only from the port's own addresses (set lookups keyed
    # by port), ARP only after its sender was checked
    assert '"@v4"' in text and '"@v6"' in text
    arp_accept = next(i for i, r in enumerate(g) if '"arp"' in json.dumps(r) and r in accepts)
    arp_checks = [
        i for i, r in enumerate(g) if "saddr ip" in json.dumps(r) or "saddr ether" in json.dumps(r)
    ]
    assert arp_checks and max(arp_checks) < arp_accept
    elements = {o["element"]["name"]: o["element"]["elem"] for o in objs if "element" in o}
    assert elements["ports"] == ["cv0123456789"]
    assert elements["mac"] == [{"concat": ["cv0123456789", "0a:58:0a:59:00:02"]}]
    assert {"concat": ["cv0123456789", "10.89.0.2"]} in elements["v4"]


def test_nd_chain_checks_link_layer_options_and_advertised_targets() -> None:
    objs = guard.table_objects([port("cv0123456789", "10.89.0.2", "fd00:89::2")])
    nd = rules(objs, "nd_cv0123456789")
    mac = 0x0A580A590002
    text = json.dumps(nd)
    assert str(mac) in text
    na_target = next(r for r in nd if any(
        e.get("match", {}).get("left") == {"payload": {"base": "th", "offset": 64, "len": 128}}
        for e in r
    ))  # fmt: skip
    targets = na_target[-2]["match"]["right"]["set"]
    assert hex(int(ipaddress.IPv6Address("fd00:89::2"))) in targets
    assert hex(int(ipaddress.IPv6Address("fe80::858:aff:fe59:2"))) in targets
    assert all(r[-1] == {"drop": None} for r in nd)


def test_attach_and_detach_are_small_transactions_of_one_ports_entries() -> None:
    p = port()
    add = guard.add_commands(p)
    kinds = [(next(iter(c)), next(iter(next(iter(c.values()))))) for c in add]
    # its ND chain and its elements: no table rebuild
    assert ("add", "table") not in kinds and ("delete", "table") not in kinds
    assert kinds[:2] == [("add", "chain"), ("flush", "chain")]
    # the port joins the guarded set last, after everything it is checked against
    assert add[-1]["add"]["element"]["name"] == "ports"
    assert all(next(iter(c.values()))[next(iter(next(iter(c.values()))))]["table"] == "cove_guard"
               for c in add)  # fmt: skip
    delete = guard.delete_commands(p)
    assert delete[0]["delete"]["element"]["name"] == "ports"
    assert delete[-1] == {
        "delete": {"chain": {"name": "nd_cv0123456789", "family": "bridge", "table": "cove_guard"}}
    }
    nd_key = next(c for c in delete if c["delete"].get("element", {}).get("name") == "nd")
    assert nd_key["delete"]["element"]["elem"] == ["cv0123456789"]


def test_guard_ports_follow_the_wanted_links() -> None:
    link = WantedLink(
        "e1", "cv00000000e1", "eth0", "0a:58:0a:59:00:05", "cv-n", 1500,
        (ipaddress.IPv4Interface("10.89.0.5/24"),),
    )  # fmt: skip
    got = guard_ports([WantedContainer("c9", (link,))])
    assert list(got) == ["cv00000000e1"]
    assert got["cv00000000e1"].container == "c9"
    assert got["cv00000000e1"].ipv4 == (ipaddress.IPv4Address("10.89.0.5"),)


def net(name: str, cidr: str, internal: bool = False) -> Network:
    n = ipaddress.ip_network(cidr)
    return Network(name, name, (Subnet(n, next(n.hosts())),), f"cv-{name}", internal=internal)


def test_internal_fence_comes_before_replies_and_dnat_are_accepted() -> None:
    objs = firewall.compile_table(
        [net("inner", "10.50.0.0/24", True), net("outer", "10.51.0.0/24")]
    )
    fwd = [json.dumps(r) for r in rules(objs, "forward")]
    fences = [i for i, r in enumerate(fwd) if "cv-inner" in r and '"drop"' in r]
    dnat = next(i for i, r in enumerate(fwd) if '"dnat"' in r)
    est = next(i for i, r in enumerate(fwd) if "established" in r)
    assert len(fences) == 2 and max(fences) < min(dnat, est)


def test_input_keeps_containers_off_loopback_and_internal_networks_off_the_host() -> None:
    objs = firewall.compile_table(
        [net("inner", "10.50.0.0/24", True), net("outer", "10.51.0.0/24")]
    )
    inp = rules(objs, "input")
    loop = [r for r in inp if "127.0.0.0" in json.dumps(r)]
    # replies of the host's own connections pass, everything else is dropped
    assert [r[-1] for r in loop] == [{"accept": None}, {"drop": None}]
    assert '"reply"' in json.dumps(loop[0])
    inner = [json.dumps(r) for r in inp if "cv-inner" in json.dumps(r)]
    assert "10.50.0.1" in inner[1] and '"dport"' in inner[1] and "53" in inner[1]
    assert inner[-1].endswith('{"drop": null}]')
    assert not any("cv-outer" in json.dumps(r) for r in inp)


def test_published_ports_mark_their_connections_and_route_localnet_is_narrow() -> None:
    v4 = ipaddress.IPv4Address("10.89.0.2")
    anyhost = ports.Published(PortMapping(8080, 80), v4, None, "cv-a", "web")
    pinned = ports.Published(PortMapping.parse("192.0.2.5:9090:90"), v4, None, "cv-b", "api")
    objs = ports.compile_table([anyhost, pinned])
    for expr in rules(objs, "prerouting"):
        mangle = next(e["mangle"] for e in expr if "mangle" in e)
        assert mangle["key"] == {"ct": {"key": "mark"}}
        assert mangle["value"]["|"][1] == ports.PUBLISHED_MARK
    assert ports.localnet_bridges([anyhost, pinned]) == {"cv-a"}


def test_policy_lets_outside_sources_in_only_through_published_ports() -> None:
    model = pc.build([replace(net("a", "10.1.0.0/24"), default_deny=True)], [], [])
    objs = pc.compile_table(model)
    outside = [r for r in rules(objs, "ingress") if "@cove_v4" in json.dumps(r)]
    assert len(outside) == 1
    text = json.dumps(outside[0])
    assert str(ports.PUBLISHED_MARK) in text and outside[0][-1] == {"accept": None}
    d = pc.decide(model, ipaddress.ip_address("192.0.2.9"), ipaddress.ip_address("10.1.0.3"),
                  L4.UDP, 53)  # fmt: skip
    assert not d.allowed


class FakeNft:
    """Records batches; ``fail`` makes the next transaction fail; ``listed``
    is what the kernel's ``ports`` set would list."""

    def __init__(self) -> None:
        self.batches: list[list[Obj]] = []
        self.replaced: list[list[Obj]] = []
        self.fail = False
        self.listed: list[str] | None = None

    def transaction(self, cmds: list[Obj]) -> None:
        if self.fail:
            self.fail = False
            raise DatapathError("nftables rejected the change: No such file or directory")
        self.batches.append(cmds)

    def replace_table(self, family: str, name: str, objects: list[Obj]) -> None:
        assert (family, name) == ("bridge", "cove_guard")
        self.replaced.append(objects)

    def list_table(self, family: str, name: str) -> list[Obj]:
        if self.listed is None:
            return []
        return [{"set": {"name": "ports", "elem": self.listed}}]

    def list_set(self, family: str, table: str, name: str) -> list[str] | None:
        assert (family, table, name) == ("bridge", "cove_guard", "ports")
        return self.listed


def wanted_link(n: int) -> WantedLink:
    return WantedLink(
        f"e{n}", f"cv00000000e{n}", "eth0", f"0a:58:0a:59:00:0{n}", "cv-n", 1500,
        (ipaddress.IPv4Interface(f"10.89.0.{n}/24"),),
    )  # fmt: skip


def test_port_guard_attaches_in_small_steps_and_rebuilds_when_out_of_step() -> None:
    nft = FakeNft()
    everything = [WantedContainer("c1", (wanted_link(1),))]
    pg = PortGuard(nft, nft, lambda: everything)  # type: ignore[arg-type]
    pg.sync(everything)
    assert len(nft.replaced) == 1 and set(pg.ports) == {"cv00000000e1"}
    # an attach: one batch of its own entries, no rebuild
    everything = [WantedContainer("c1", (wanted_link(1), wanted_link(2)))]
    pg.add("c1", wanted_link(2))
    assert len(nft.replaced) == 1 and len(nft.batches) == 1
    assert set(pg.ports) == {"cv00000000e1", "cv00000000e2"}
    pg.sync(everything)  # nothing changed: nothing done
    assert len(nft.replaced) == 1 and len(nft.batches) == 1
    # the periodic check finds the kernel as recorded: nothing done
    nft.listed = ["cv00000000e2", "cv00000000e1"]
    pg.sync(everything, force=True)
    assert len(nft.replaced) == 1
    # the periodic pass compares with the kernel: an entry deleted by hand
    nft.listed = ["cv00000000e1"]
    pg.sync(everything, force=True)
    assert len(nft.replaced) == 2
    # a detach whose entries the kernel no longer had: rebuilt from the store
    everything = [WantedContainer("c1", (wanted_link(1),))]
    nft.fail = True
    pg.remove(["cv00000000e2"])
    assert len(nft.replaced) == 3 and set(pg.ports) == {"cv00000000e1"}
    pg.forget("c1")
    assert pg.ports == {} and nft.batches[-1][0]["delete"]["element"]["name"] == "ports"
