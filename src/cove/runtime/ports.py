"""Published ports compiled into cove's nft table ``inet cove_ports`` (pure).

- prerouting and output (nat): a packet to one of the host's own addresses
  (``fib daddr type local``, which includes 127.0.0.1 and the host's IPv6
  addresses) or to the mapping's host IP, on the published port, is DNATed
  to the container: an IPv4 packet to its IPv4 address, an IPv6 packet to
  its IPv6 address (as Docker: a mapping without a host IP publishes on
  both families; a family the container has no address in is skipped; a
  bracketed IPv6 host IP publishes on that address only). prerouting
  covers other hosts and containers (hairpin through the host's address);
  output covers clients on the host itself.
- postrouting (nat): DNATed connections from 127.0.0.0/8 are masqueraded
  (a loopback source cannot leave the host; the bridge also needs
  ``route_localnet=1``, see ``localnet_bridges``), and so are DNATed
  connections of either family that go back out of the bridge they came in
  on (a container reaching its own network's published port), and those
  from a container to itself (its own published port: bridged straight
  back by br_netfilter), so replies return through the host. Connections
  from other cove networks are already masqueraded by the network table's
  egress rule, for IPv6 subnets too.

IPv6 loopback (``::1``) is not published: the kernel has no
``route_localnet`` for IPv6 and drops a ``::1`` packet DNATed to another
address, so ``::1`` is left out of the IPv6 match (a client there gets a
refusal, not a hang). The forward chain of ``inet cove`` accepts DNATed
connections across networks.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cove.runtime.spec import PortMapping

FAMILY = "inet"
TABLE = "cove_ports"
PUBLISHED_MARK = 0x01000000
"""Conntrack mark bit of connections DNATed by a published port, so the
policy table can let those in from outside cove and nothing else."""

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Published:
    """One mapping of one running container, with where to send it."""

    mapping: PortMapping
    ipv4: ipaddress.IPv4Address | None
    ipv6: ipaddress.IPv6Address | None
    bridge: str
    container: str

    def targets(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """The container addresses this mapping DNATs to, one per family it
        is published on."""
        found = [a for a in (self.ipv4, self.ipv6) if a is not None]
        return [a for a in found if self.mapping.publishes_on(a.version)]


def _match(left: Obj, right: Any, op: str = "==") -> Obj:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> Obj:
    return {"meta": {"key": key}}


def _chain(name: str, hook: str, prio: int) -> Obj:
    return {"chain": {"name": name, "type": "nat", "hook": hook, "prio": prio, "policy": "accept"}}


def _daddr(family: str) -> Obj:
    return {"payload": {"protocol": family, "field": "daddr"}}


def _dnat(m: PortMapping, target: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[Obj]:
    family, l3 = ("ip", "ipv4") if target.version == 4 else ("ip6", "ipv6")
    expr = [_match(_meta("nfproto"), l3)]
    if m.host_ip is None or m.host_ip.is_unspecified:
        expr.append(_match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"))
        if target.version == 6:
            expr.append(_match(_daddr(family), "::1", op="!="))
    else:
        expr.append(_match(_daddr(family), str(m.host_ip)))
    mark = {"ct": {"key": "mark"}}
    return [
        *expr,
        _match(_meta("l4proto"), m.proto.value),
        _match({"payload": {"protocol": "th", "field": "dport"}}, m.host_port),
        {"mangle": {"key": mark, "value": {"|": [mark, PUBLISHED_MARK]}}},
        {"dnat": {"family": family, "addr": str(target), "port": m.port}},
    ]


def compile_table(published: Iterable[Published]) -> list[Obj]:
    items = sorted(published, key=lambda p: (p.mapping.proto, p.mapping.host_port))
    objs: list[Obj] = [
        _chain("prerouting", "prerouting", -100),
        _chain("output", "output", -100),
        _chain("postrouting", "postrouting", 100),
    ]
    for p in items:
        for target in p.targets():
            expr = _dnat(p.mapping, target)
            for chain in ("prerouting", "output"):
                objs.append({"rule": {"chain": chain, "expr": expr, "comment": p.container[:64]}})
    if items:
        objs.append(
            {
                "rule": {
                    "chain": "postrouting",
                    "expr": [
                        _match({"ct": {"key": "status"}}, "dnat", op="in"),
                        _match(_meta("nfproto"), "ipv4"),
                        _match(
                            {"payload": {"protocol": "ip", "field": "saddr"}},
                            {"prefix": {"addr": "127.0.0.0", "len": 8}},
                        ),
                        {"masquerade": None},
                    ],
                }
            }
        )
    # A container reaching its own published port: the DNATed packet is
    # bridged back to the port it came from (br_netfilter: no input
    # interface in postrouting, so the rule below does not see it), and
    # would arrive with the container's own address as source (a martian,
    # dropped). Masqueraded, its replies go back through the host.
    for target in sorted({t for p in items for t in p.targets()}, key=str):
        family = "ip" if target.version == 4 else "ip6"
        objs.append(
            {
                "rule": {
                    "chain": "postrouting",
                    "expr": [
                        _match({"ct": {"key": "status"}}, "dnat", op="in"),
                        _match({"payload": {"protocol": family, "field": "saddr"}}, str(target)),
                        _match(_daddr(family), str(target)),
                        {"masquerade": None},
                    ],
                    "comment": "hairpin: a container reaching its own published port",
                }
            }
        )
    for bridge in sorted({p.bridge for p in items}):
        objs.append(
            {
                "rule": {
                    "chain": "postrouting",
                    "expr": [
                        _match({"ct": {"key": "status"}}, "dnat", op="in"),
                        _match(_meta("iifname"), bridge),
                        _match(_meta("oifname"), bridge),
                        {"masquerade": None},
                    ],
                }
            }
        )
    return objs


def localnet_bridges(published: Iterable[Published]) -> set[str]:
    """Bridges that must route packets with a loopback source and the
    replies to them (``route_localnet``): those of IPv4 mappings the host
    may reach on 127.0.0.1, without a host IP or with a loopback one. A
    container on such a bridge is kept from the host's loopback by the
    input chain of ``inet cove``."""
    out = set()
    for p in published:
        ip = p.mapping.host_ip
        on_loopback = ip is None or ip.is_unspecified or ip.is_loopback
        if on_loopback and any(t.version == 4 for t in p.targets()):
            out.add(p.bridge)
    return out
