"""Compile the networks into cove's nft table ``inet cove`` (pure).

- forward: an internal network's bridge neither sends nor receives routed
  traffic beyond itself, checked first, so neither replies nor DNATed
  connections (a VIP or a published port that points outside) open a way
  out; then replies pass; connections that were DNATed (published ports,
  service VIPs) may cross networks; everything else routed from one cove
  bridge to another is dropped (isolation, as in Docker).
- input: a container never reaches the host's loopback addresses (the
  bridges of published ports have ``route_localnet`` on, which would let
  it), except the replies of the host's own connections to a published
  port; a container on an internal network reaches only its gateway's DNS
  and ICMP (ping, ND) on the host.
- postrouting: egress masquerade for each non-internal network's subnets.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from cove.datapath.base import BRIDGE_PREFIX
from cove.model import Network

FAMILY = "inet"
TABLE = "cove"

Obj = dict[str, Any]


def _meta(key: str, op: str, value: str) -> Obj:
    return {"match": {"op": op, "left": {"meta": {"key": key}}, "right": value}}


def _rule(chain: str, *expr: Obj, comment: str | None = None) -> Obj:
    body: Obj = {"chain": chain, "expr": list(expr)}
    if comment:
        body["comment"] = comment
    return {"rule": body}


_ACCEPT: Obj = {"accept": None}
_DROP: Obj = {"drop": None}


def _ct(key: str, op: str, value: Any) -> Obj:
    return {"match": {"op": op, "left": {"ct": {"key": key}}, "right": value}}


def _daddr(version: int) -> Obj:
    return {"payload": {"protocol": "ip" if version == 4 else "ip6", "field": "daddr"}}


_BRIDGES = BRIDGE_PREFIX + "*"
_LOOPBACK = ((4, {"prefix": {"addr": "127.0.0.0", "len": 8}}), (6, "::1"))


def compile_table(networks: Iterable[Network]) -> list[Obj]:
    nets = sorted(networks, key=lambda n: n.name)
    objs: list[Obj] = [
        {
            "chain": {
                "name": "forward",
                "type": "filter",
                "hook": "forward",
                "prio": 0,
                "policy": "accept",
            }
        },
        {
            "chain": {
                "name": "input",
                "type": "filter",
                "hook": "input",
                "prio": 0,
                "policy": "accept",
            }
        },
        {
            "chain": {
                "name": "postrouting",
                "type": "nat",
                "hook": "postrouting",
                "prio": 100,
                "policy": "accept",
            }
        },
    ]
    for net in nets:
        if not net.internal:
            continue
        br = net.bridge
        objs.append(
            _rule(
                "forward",
                _meta("iifname", "==", br),
                _meta("oifname", "!=", br),
                _DROP,
                comment=f"internal {net.name}",
            )
        )
        objs.append(
            _rule(
                "forward",
                _meta("oifname", "==", br),
                _meta("iifname", "!=", br),
                _DROP,
                comment=f"internal {net.name}",
            )
        )
    objs.append(_rule("forward", _ct("state", "in", ["established", "related"]), _ACCEPT))
    objs.append(_rule("forward", _ct("status", "in", "dnat"), _ACCEPT))
    objs.extend(_input_rules(nets))
    for net in nets:
        br = net.bridge
        objs.append(
            _rule("forward", _meta("iifname", "==", br), _meta("oifname", "==", br), _ACCEPT)
        )
    objs.append(
        _rule(
            "forward",
            _meta("iifname", "==", _BRIDGES),
            _meta("oifname", "==", _BRIDGES),
            _DROP,
            comment="isolation between cove networks",
        )
    )
    for net in nets:
        if net.internal:
            continue
        for sub in net.subnets:
            proto = "ip" if sub.cidr.version == 4 else "ip6"
            objs.append(
                _rule(
                    "postrouting",
                    {
                        "match": {
                            "op": "==",
                            "left": {"payload": {"protocol": proto, "field": "saddr"}},
                            "right": {
                                "prefix": {
                                    "addr": str(sub.cidr.network_address),
                                    "len": sub.cidr.prefixlen,
                                }
                            },
                        }
                    },
                    _meta("oifname", "!=", net.bridge),
                    {"masquerade": None},
                    comment=f"egress {net.name}",
                )
            )
    return objs


def _input_rules(nets: list[Network]) -> list[Obj]:
    rules: list[Obj] = []
    for version, loopback in _LOOPBACK:
        # The replies of the host's own 127.0.0.1 connections to a published
        # port come back with the loopback address once un-masqueraded.
        match = {"match": {"op": "==", "left": _daddr(version), "right": loopback}}
        rules.append(
            _rule(
                "input",
                _meta("iifname", "==", _BRIDGES),
                match,
                _ct("direction", "==", "reply"),
                _ACCEPT,
            )
        )
        rules.append(
            _rule(
                "input",
                _meta("iifname", "==", _BRIDGES),
                match,
                _DROP,
                comment="the host's loopback, from a container",
            )
        )
    for net in nets:
        if not net.internal:
            continue
        br = net.bridge
        rules.append(
            _rule(
                "input",
                _meta("iifname", "==", br),
                _ct("state", "in", ["established", "related"]),
                _ACCEPT,
            )
        )
        for sub in net.subnets:
            gw = {
                "match": {"op": "==", "left": _daddr(sub.cidr.version), "right": str(sub.gateway)}
            }
            l4 = {
                "match": {
                    "op": "==",
                    "left": {"meta": {"key": "l4proto"}},
                    "right": {"set": ["tcp", "udp"]},
                }
            }
            dport = {
                "match": {
                    "op": "==",
                    "left": {"payload": {"protocol": "th", "field": "dport"}},
                    "right": 53,
                }
            }
            rules.append(_rule("input", _meta("iifname", "==", br), gw, l4, dport, _ACCEPT))
        icmp = {
            "match": {
                "op": "==",
                "left": {"meta": {"key": "l4proto"}},
                "right": {"set": ["icmp", "ipv6-icmp"]},
            }
        }
        rules.append(_rule("input", _meta("iifname", "==", br), icmp, _ACCEPT))
        rules.append(
            _rule("input", _meta("iifname", "==", br), _DROP, comment=f"internal {net.name}")
        )
    return rules


def digest(objs: list[Obj]) -> str:
    return hashlib.sha256(json.dumps(objs, sort_keys=True).encode()).hexdigest()
