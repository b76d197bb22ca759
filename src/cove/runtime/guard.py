"""Anti-spoofing per bridge port, compiled into ``bridge cove_guard`` (pure).

A container may send only from its own MAC and its own IPv4/IPv6 addresses,
on each of its interfaces, whatever it does to them inside (it may hold
CAP_NET_ADMIN). The check runs where its frames enter the bridge, on the
host-side veth (``cv<10 hex>``, or ``cn<10 hex>`` for a container of
another runtime attached through CNI), before anything else sees them::

    set ports   ifname                     guarded ports
    set mac     ifname . ether_addr        its MAC
    set v4      ifname . ipv4_addr         its IPv4 addresses
    set v6      ifname . ipv6_addr         its IPv6 addresses and link-local
    map nd      ifname : jump nd_<port>    its ND option checks
    chain prerouting (bridge filter, prio -300):
        iifname @ports jump guard
        iifname "cv<hex>*" drop            a container port without entries
        iifname "cn<hex>*" drop            (the same for a CNI attachment)
    chain guard:
        the frame's source MAC must be the port's
        ARP: sender MAC the port's, sender IP the port's (or 0.0.0.0, a probe)
        IPv4: source address the port's
        IPv6: RA and redirects never; NS/NA/RS through nd_<port>;
              ``::`` only for ICMPv6 (DAD, MLD); else the port's addresses
        VLAN-tagged frames, and anything not ARP, IPv4 or IPv6: dropped
    chain nd_<port>: the first link-layer option of NS/NA/RS carries the
        port's MAC, and an NA's target is one of the port's addresses.

ND options and targets have no field of their own in nft 1.0.6 and a raw
payload cannot be looked up in a typed set, so they are compared with
constants in a chain per port, reached through the ``nd`` map. Every other
check is a set lookup keyed by port name, so attaching or detaching a port
is a small transaction of elements (``add_commands``/``delete_commands``);
``table_objects`` builds the whole table for start-up and repair.

Frames the bridge sends itself (the gateway's ARP and ND) never pass the
prerouting hook, and ports that are not container veths are not guarded.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

FAMILY = "bridge"
TABLE = "cove_guard"
# Host veths are "cv" + 10 hex digits ("cn" for CNI attachments); nft
# wildcards only end a name, so one per first digit (bridges are "cv-...",
# other programs' links such as test harness veths "cvt..." or a "cni0"
# bridge are left alone).
PORT_PATTERNS = [f"{p}{d}*" for p in ("cv", "cn") for d in "0123456789abcdef"]

Obj = dict[str, Any]

# ICMPv6 ND option headers (type, length in 8-byte units) as 16-bit values.
_SLLA = 0x0101
_TLLA = 0x0201


@dataclass(frozen=True, slots=True)
class Port:
    """One container interface as the guard sees it."""

    name: str  # the host-side veth
    container: str  # container id, so a container's pass finds its ports
    mac: str
    ipv4: tuple[ipaddress.IPv4Address, ...] = ()
    ipv6: tuple[ipaddress.IPv6Address, ...] = ()

    @staticmethod
    def of(
        name: str,
        container: str,
        mac: str,
        addresses: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address],
    ) -> Port:
        addrs = list(addresses)
        v4 = sorted({a for a in addrs if isinstance(a, ipaddress.IPv4Address)})
        v6 = {a for a in addrs if isinstance(a, ipaddress.IPv6Address)}
        v6.add(link_local(mac))
        return Port(name, container, mac.lower(), tuple(v4), tuple(sorted(v6)))


def link_local(mac: str) -> ipaddress.IPv6Address:
    """The fe80::/64 address the kernel derives from ``mac`` (EUI-64), which
    a fresh container namespace uses."""
    b = bytearray(int(x, 16) for x in mac.split(":"))
    eui = bytes([b[0] ^ 0x02, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]])
    return ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + eui)


def _nd_chain(port: str) -> str:
    return f"nd_{port}"


def _meta(key: str) -> Obj:
    return {"meta": {"key": key}}


def _payload(protocol: str, fieldname: str) -> Obj:
    return {"payload": {"protocol": protocol, "field": fieldname}}


def _raw(offset: int, length: int) -> Obj:
    return {"payload": {"base": "th", "offset": offset, "len": length}}


def _match(left: Obj, right: Any, op: str = "==") -> Obj:
    return {"match": {"op": op, "left": left, "right": right}}


def _rule(chain: str, *expr: Obj, comment: str | None = None) -> Obj:
    body: Obj = {"chain": chain, "expr": list(expr)}
    if comment:
        body["comment"] = comment
    return {"rule": body}


def _icmp6(kind: str) -> Obj:
    return _match(_payload("icmpv6", "type"), kind)


_ACCEPT: Obj = {"accept": None}
_DROP: Obj = {"drop": None}


def _base_objects() -> list[Obj]:
    return [
        {
            "chain": {
                "name": "prerouting",
                "type": "filter",
                "hook": "prerouting",
                "prio": -300,
                "policy": "accept",
            }
        },
        {"chain": {"name": "guard"}},
        {"set": {"name": "ports", "type": "ifname"}},
        {"set": {"name": "mac", "type": ["ifname", "ether_addr"]}},
        {"set": {"name": "v4", "type": ["ifname", "ipv4_addr"]}},
        {"set": {"name": "v6", "type": ["ifname", "ipv6_addr"]}},
        {"map": {"name": "nd", "type": "ifname", "map": "verdict"}},
    ]


def _base_rules() -> list[Obj]:
    port = _meta("iifname")
    ether_type = {"payload": {"protocol": "ether", "field": "type"}}
    return [
        _rule("prerouting", _match(port, "@ports"), {"jump": {"target": "guard"}}),
        _rule(
            "prerouting",
            _match(port, {"set": PORT_PATTERNS}),
            _DROP,
            comment="a container port without guard entries",
        ),
        _rule(
            "guard",
            _match({"concat": [port, _payload("ether", "saddr")]}, "@mac", "!="),
            _DROP,
            comment="forged MAC",
        ),
        _rule(
            "guard",
            _match(ether_type, {"set": ["vlan", "8021ad"]}),
            _DROP,
            comment="VLAN tags: the checks below read the untagged headers",
        ),
        _rule(
            "guard",
            _match({"concat": [port, _payload("arp", "saddr ether")]}, "@mac", "!="),
            _DROP,
            comment="ARP for another MAC",
        ),
        _rule(
            "guard",
            _match(_payload("arp", "saddr ip"), "0.0.0.0", "!="),
            _match({"concat": [port, _payload("arp", "saddr ip")]}, "@v4", "!="),
            _DROP,
            comment="ARP for another address",
        ),
        _rule("guard", _match(ether_type, "arp"), _ACCEPT),
        _rule(
            "guard",
            _match({"concat": [port, _payload("ip", "saddr")]}, "@v4"),
            _ACCEPT,
        ),
        _rule(
            "guard",
            _match(_payload("icmpv6", "type"), {"set": ["nd-router-advert", "nd-redirect"]}),
            _DROP,
            comment="containers are not routers",
        ),
        _rule(
            "guard",
            _match(
                _payload("icmpv6", "type"),
                {"set": ["nd-router-solicit", "nd-neighbor-solicit", "nd-neighbor-advert"]},
            ),
            {"vmap": {"key": port, "data": "@nd"}},
        ),
        _rule(
            "guard",
            _match(_payload("ip6", "saddr"), "::"),
            _match(_meta("l4proto"), "ipv6-icmp"),
            _ACCEPT,
            comment="DAD and MLD before an address is usable",
        ),
        _rule(
            "guard",
            _match({"concat": [port, _payload("ip6", "saddr")]}, "@v6"),
            _ACCEPT,
        ),
        _rule("guard", _DROP, comment="a forged source, or not ARP, IPv4 or IPv6"),
    ]


def _nd_rules(p: Port) -> list[Obj]:
    chain = _nd_chain(p.name)
    mac = int(p.mac.replace(":", ""), 16)
    own = [hex(int(a)) for a in p.ipv6]
    not_dad = _match(_payload("ip6", "saddr"), "::", "!=")
    # A payload beyond the packet's end stops a rule without a verdict, so
    # an NS, NA or RS without options passes these; Linux uses the first
    # option of a kind and ignores repeats, so the first is the one checked.
    ns, na, rs = (
        _icmp6("nd-neighbor-solicit"),
        _icmp6("nd-neighbor-advert"),
        _icmp6("nd-router-solicit"),
    )
    return [
        _rule(chain, ns, not_dad, _match(_raw(192, 16), _SLLA, "!="), _DROP),
        _rule(chain, ns, not_dad, _match(_raw(208, 48), mac, "!="), _DROP),
        _rule(chain, na, _match(_raw(64, 128), {"set": own}, "!="), _DROP),
        _rule(chain, na, _match(_raw(192, 16), _TLLA, "!="), _DROP),
        _rule(chain, na, _match(_raw(208, 48), mac, "!="), _DROP),
        _rule(chain, rs, _match(_raw(64, 16), _SLLA, "!="), _DROP),
        _rule(chain, rs, _match(_raw(80, 48), mac, "!="), _DROP),
    ]


def _elements(p: Port) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {
        "ports": [p.name],
        "mac": [{"concat": [p.name, p.mac]}],
        "nd": [[p.name, {"jump": {"target": _nd_chain(p.name)}}]],
    }
    if p.ipv4:
        out["v4"] = [{"concat": [p.name, str(a)]} for a in p.ipv4]
    out["v6"] = [{"concat": [p.name, str(a)]} for a in p.ipv6]
    return out


def table_objects(ports: Iterable[Port]) -> list[Obj]:
    """The whole table with ``ports`` guarded, for ``Nft.replace_table``.
    Order matters to nft: chains and sets, the per-port chains' rules, the
    elements (the ``nd`` map names those chains), then the base rules."""
    items = sorted(ports, key=lambda p: p.name)
    objs = _base_objects()
    elements: dict[str, list[Any]] = {}
    for p in items:
        objs.append({"chain": {"name": _nd_chain(p.name)}})
        objs.extend(_nd_rules(p))
        for name, elems in _elements(p).items():
            elements.setdefault(name, []).extend(elems)
    objs.extend({"element": {"name": k, "elem": v}} for k, v in sorted(elements.items()))
    objs.extend(_base_rules())
    return objs


def _cmd(verb: str, kind: str, body: Obj) -> Obj:
    return {verb: {kind: {**body, "family": FAMILY, "table": TABLE}}}


def add_commands(port: Port) -> list[Obj]:
    """One transaction's worth that guards ``port`` (the table must exist).
    Adding is safe to repeat: the ND chain is flushed before it is filled."""
    chain = _nd_chain(port.name)
    cmds = [_cmd("add", "chain", {"name": chain}), _cmd("flush", "chain", {"name": chain})]
    cmds.extend(_cmd("add", "rule", r["rule"]) for r in _nd_rules(port))
    # The port set last: until then its frames meet the fail-closed drop.
    elems = _elements(port)
    for name in ("mac", "v4", "v6", "nd", "ports"):
        if name in elems:
            cmds.append(_cmd("add", "element", {"name": name, "elem": elems[name]}))
    return cmds


def delete_commands(port: Port) -> list[Obj]:
    """One transaction's worth that removes ``port``'s entries (all of them
    must be there, as ``add_commands`` left them)."""
    elems = _elements(port)
    cmds: list[Obj] = []
    for name in ("ports", "nd", "mac", "v4", "v6"):
        if name not in elems:
            continue
        # Deleting a map element names its key only.
        keys = [e[0] for e in elems[name]] if name == "nd" else elems[name]
        cmds.append(_cmd("delete", "element", {"name": name, "elem": keys}))
    cmds.append(_cmd("delete", "chain", {"name": _nd_chain(port.name)}))
    return cmds
