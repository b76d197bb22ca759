"""Published ports compiled into cove's nft table ``inet cove_ports`` (pure).

- prerouting and output (nat): a packet to one of the host's own addresses
  (``fib daddr type local``, which includes 127.0.0.1) or to the mapping's
  host IP, on the published port, is DNATed to the container. prerouting
  covers other hosts and containers (hairpin through the host's address);
  output covers clients on the host itself.
- postrouting (nat): DNATed connections from 127.0.0.0/8 are masqueraded
  (a loopback source cannot leave the host; the bridge also needs
  ``route_localnet=1``, see ``localnet_bridges``), and so are DNATed
  connections that go back out of the bridge they came in on (a container
  reaching its own network's published port), so replies return through
  the host. Connections from other cove networks are already masqueraded by
  the network table's egress rule.

Only IPv4 is published; the forward chain of ``inet cove`` accepts DNATed
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

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Published:
    """One mapping of one running container, with where to send it."""

    mapping: PortMapping
    address: ipaddress.IPv4Address
    bridge: str
    container: str


def _match(left: Obj, right: Any, op: str = "==") -> Obj:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> Obj:
    return {"meta": {"key": key}}


def _chain(name: str, hook: str, prio: int) -> Obj:
    return {"chain": {"name": name, "type": "nat", "hook": hook, "prio": prio, "policy": "accept"}}


def compile_table(published: Iterable[Published]) -> list[Obj]:
    items = sorted(published, key=lambda p: (p.mapping.proto, p.mapping.host_port))
    objs: list[Obj] = [
        _chain("prerouting", "prerouting", -100),
        _chain("output", "output", -100),
        _chain("postrouting", "postrouting", 100),
    ]
    for p in items:
        m = p.mapping
        if m.host_ip is None:
            dest = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
        else:
            dest = _match({"payload": {"protocol": "ip", "field": "daddr"}}, str(m.host_ip))
        expr = [
            _match(_meta("nfproto"), "ipv4"),
            dest,
            _match(_meta("l4proto"), m.proto.value),
            _match({"payload": {"protocol": "th", "field": "dport"}}, m.host_port),
            {"dnat": {"family": "ip", "addr": str(p.address), "port": m.port}},
        ]
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
    """Bridges that must accept DNATed packets with a loopback source."""
    return {p.bridge for p in published}
