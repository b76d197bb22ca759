"""Compile the networks into cove's nft table ``inet cove`` (pure).

- forward: replies pass; connections that were DNATed (published ports,
  service VIPs) may cross networks; an internal network's bridge neither
  sends nor receives routed traffic beyond itself; everything else routed
  from one cove bridge to another is dropped (isolation, as in Docker).
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
                "name": "postrouting",
                "type": "nat",
                "hook": "postrouting",
                "prio": 100,
                "policy": "accept",
            }
        },
        _rule(
            "forward",
            {
                "match": {
                    "op": "in",
                    "left": {"ct": {"key": "state"}},
                    "right": ["established", "related"],
                }
            },
            _ACCEPT,
        ),
        _rule(
            "forward",
            {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
            _ACCEPT,
        ),
    ]
    for net in nets:
        br = net.bridge
        if net.internal:
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
        objs.append(
            _rule("forward", _meta("iifname", "==", br), _meta("oifname", "==", br), _ACCEPT)
        )
    objs.append(
        _rule(
            "forward",
            _meta("iifname", "==", BRIDGE_PREFIX + "*"),
            _meta("oifname", "==", BRIDGE_PREFIX + "*"),
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


def digest(objs: list[Obj]) -> str:
    return hashlib.sha256(json.dumps(objs, sort_keys=True).encode()).hexdigest()
