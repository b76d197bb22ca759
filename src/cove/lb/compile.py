"""Compile VIPs and their passing backends to nft JSON for ``inet cove_lb`` (pure).

The table::

    set vips_v4      VIP addresses (every VIP, with or without backends)
    set live_v4      VIP . proto . port that has at least one backend
    map svc_v4       VIP . proto . port -> goto s_<key>
    set hairpin_v4   backend . backend: a backend that reached itself
    chain filter_pre / filter_out (filter, prio -110, before DNAT):
        a new connection to a VIP that is not live is refused at once
        (TCP reset, else ICMP port unreachable), never left to time out
    chain prerouting / output (nat, prio -100): vmap @svc_v4, and a drop
        for a VIP the map did not match (never routed on as an address)
    chain postrouting (nat, srcnat): masquerade hairpin, so the backend's
        reply to itself goes back through conntrack
    chain s_<key>: one per (service, VIP port):
        dnat to numgen random mod W map { ranges by weight : addr . port }
        then dnat to the first backend (reached only if the lookup raced
        an update and missed; see ``_fallback``)
      or, with client-IP affinity, per backend e_<key>_<b> chains and
      a_<key>_<b> timeout sets (kube-proxy's nftables scheme).
    (the same in v6)

Everything a service owns has deterministic names, so a change to one
service is a small transaction (``service_update``) and a restart
recompiles the same table (``table_objects``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any

from cove.lb.model import Backend, Vip

FAMILY = "inet"
TABLE = "cove_lb"
MAX_BUCKETS = 1000
"""numgen buckets per service port; larger weight sums are scaled down."""

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Group:
    """The backends behind one VIP port (never empty)."""

    vport: int
    backends: tuple[Backend, ...]


@dataclass(frozen=True, slots=True)
class ServiceLb:
    """What one service's VIP compiles from."""

    vip: Vip
    groups: tuple[Group, ...]

    @property
    def v(self) -> str:
        return "v4" if self.vip.address.version == 4 else "v6"


def plan(vip: Vip, backends: Iterable[Backend]) -> ServiceLb:
    """Group a VIP's passing backends by VIP port (pure)."""
    usable = sorted(
        {b for b in backends if b.weight > 0 and b.address.version == vip.address.version},
        key=lambda b: (b.port, b.address, b.weight),
    )
    by_port: dict[int, list[Backend]] = {}
    for b in usable:
        by_port.setdefault(vip.port if vip.port is not None else b.port, []).append(b)
    return ServiceLb(vip, tuple(Group(p, tuple(bs)) for p, bs in sorted(by_port.items())))


def _h(text: str, n: int = 10) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def chain_name(service: str, vport: int) -> str:
    return f"s_{_h(f'{service}/{vport}')}"


def _backend_id(b: Backend) -> str:
    return _h(f"{b.address}/{b.port}", 8)


def buckets(weights: Sequence[int]) -> list[int]:
    """Bucket counts proportional to ``weights``: divided by their gcd and
    scaled to at most MAX_BUCKETS in all, each backend keeping at least one."""
    g = reduce(math.gcd, weights)
    out = [w // g for w in weights]
    total = sum(out)
    if total > MAX_BUCKETS:
        out = [max(1, round(w * MAX_BUCKETS / total)) for w in out]
    return out


def _l3(v: str) -> str:
    return "ip" if v == "v4" else "ip6"


def _payload(v: str, field: str) -> Obj:
    return {"payload": {"protocol": _l3(v), "field": field}}


def _key_expr(v: str) -> Obj:
    return {
        "concat": [
            _payload(v, "daddr"),
            {"meta": {"key": "l4proto"}},
            {"payload": {"protocol": "th", "field": "dport"}},
        ]
    }


def _l4_match() -> Obj:
    return {
        "match": {
            "op": "==",
            "left": {"meta": {"key": "l4proto"}},
            "right": {"set": ["tcp", "udp"]},
        }
    }


def _dnat_one(v: str, b: Backend) -> Obj:
    return {"dnat": {"family": _l3(v), "addr": str(b.address), "port": b.port}}


def _svc_elements(svc: ServiceLb, group: Group) -> tuple[list[Any], list[Any]]:
    """(svc map elements, live set elements) of one group."""
    name = chain_name(svc.vip.service, group.vport)
    keys = [{"concat": [str(svc.vip.address), p.value, group.vport]} for p in svc.vip.protocols]
    return [[k, {"goto": {"target": name}}] for k in keys], keys


def _service_chains(svc: ServiceLb) -> tuple[list[str], list[Obj], list[Obj]]:
    """(chain names, affinity set objects, rules) a service needs."""
    chains: list[str] = []
    sets: list[Obj] = []
    rules: list[Obj] = []
    v = svc.v
    for group in svc.groups:
        s_name = chain_name(svc.vip.service, group.vport)
        chains.append(s_name)
        counts = buckets([b.weight for b in group.backends])
        total = sum(counts)
        ranges: list[Any] = []
        start = 0
        for n in counts:
            ranges.append(start if n == 1 else {"range": [start, start + n - 1]})
            start += n
        numgen = {"numgen": {"mode": "random", "mod": total, "offset": 0}}
        if svc.vip.affinity_timeout <= 0:
            data = [
                [r, {"concat": [str(b.address), b.port]}]
                for r, b in zip(ranges, group.backends, strict=True)
            ]
            rules.append(
                {
                    "rule": {
                        "chain": s_name,
                        "expr": [
                            _l4_match(),
                            {
                                "dnat": {
                                    "family": _l3(v),
                                    "addr": {"map": {"key": numgen, "data": {"set": data}}},
                                }
                            },
                        ],
                    }
                }
            )
            rules.append(_fallback(s_name, [_l4_match(), _dnat_one(v, group.backends[0])]))
            continue
        targets: list[Any] = []
        for r, b in zip(ranges, group.backends, strict=True):
            bid = _backend_id(b)
            e_name = f"e_{s_name[2:]}_{bid}"
            a_name = f"a_{s_name[2:]}_{bid}"
            chains.append(e_name)
            sets.append(
                {
                    "set": {
                        "name": a_name,
                        "type": "ipv4_addr" if v == "v4" else "ipv6_addr",
                        "flags": ["timeout"],
                        "timeout": svc.vip.affinity_timeout,
                        "size": 65535,
                    }
                }
            )
            rules.append(
                {
                    "rule": {
                        "chain": e_name,
                        "expr": [
                            {
                                "set": {
                                    "op": "update",
                                    "elem": _payload(v, "saddr"),
                                    "set": f"@{a_name}",
                                }
                            },
                            _l4_match(),
                            _dnat_one(v, b),
                        ],
                    }
                }
            )
            rules.append(
                {
                    "rule": {
                        "chain": s_name,
                        "expr": [
                            {
                                "match": {
                                    "op": "==",
                                    "left": _payload(v, "saddr"),
                                    "right": f"@{a_name}",
                                }
                            },
                            {"goto": {"target": e_name}},
                        ],
                    }
                }
            )
            targets.append([r, {"goto": {"target": e_name}}])
        rules.append(
            {
                "rule": {
                    "chain": s_name,
                    "expr": [{"vmap": {"key": numgen, "data": {"set": targets}}}],
                }
            }
        )
        first = f"e_{s_name[2:]}_{_backend_id(group.backends[0])}"
        rules.append(_fallback(s_name, [{"goto": {"target": first}}]))
    return chains, sets, rules


def _fallback(chain: str, expr: list[Obj]) -> Obj:
    """The rule after a service's numgen lookup, reached only when the lookup
    missed. The kernel picks a packet's rules by the generation it saw on
    entry but checks an anonymous map's elements against the generation at
    lookup time, so a packet racing a transaction that replaces the rule can
    miss every element; it goes to the first backend of the same rules
    instead of leaving with its VIP still as destination."""
    return {"rule": {"chain": chain, "expr": expr, "comment": "numgen lookup raced an update"}}


def hairpin_elements(services: Iterable[ServiceLb]) -> dict[str, set[str]]:
    """Backend addresses per family ("v4"/"v6") for the hairpin sets."""
    out: dict[str, set[str]] = {"v4": set(), "v6": set()}
    for svc in services:
        for g in svc.groups:
            for b in g.backends:
                out[svc.v].add(str(b.address))
    return out


def _pair(addr: str) -> Obj:
    return {"concat": [addr, addr]}


def _base_objects() -> list[Obj]:
    objs: list[Obj] = []
    for name, hook, ctype, prio in (
        ("filter_pre", "prerouting", "filter", -110),
        ("filter_out", "output", "filter", -110),
        ("prerouting", "prerouting", "nat", -100),
        ("output", "output", "nat", -100),
        ("postrouting", "postrouting", "nat", 100),
    ):
        objs.append(
            {"chain": {"name": name, "type": ctype, "hook": hook, "prio": prio, "policy": "accept"}}
        )
    for v, addr_t in (("v4", "ipv4_addr"), ("v6", "ipv6_addr")):
        objs.append({"set": {"name": f"vips_{v}", "type": addr_t}})
        objs.append({"set": {"name": f"live_{v}", "type": [addr_t, "inet_proto", "inet_service"]}})
        objs.append({"set": {"name": f"hairpin_{v}", "type": [addr_t, addr_t]}})
        objs.append(
            {
                "map": {
                    "name": f"svc_{v}",
                    "type": [addr_t, "inet_proto", "inet_service"],
                    "map": "verdict",
                }
            }
        )
    return objs


def _base_rules() -> list[Obj]:
    rules: list[Obj] = []
    for v in ("v4", "v6"):
        not_live = [
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
            {"match": {"op": "==", "left": _payload(v, "daddr"), "right": f"@vips_{v}"}},
            {"match": {"op": "!=", "left": _key_expr(v), "right": f"@live_{v}"}},
        ]
        for chain in ("filter_pre", "filter_out"):
            tcp = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}
            rules.append(
                {
                    "rule": {
                        "chain": chain,
                        "expr": [*not_live, tcp, {"reject": {"type": "tcp reset"}}],
                        "comment": "VIP without a passing backend",
                    }
                }
            )
            rules.append(
                {
                    "rule": {
                        "chain": chain,
                        "expr": [
                            *not_live,
                            {"reject": {"type": "icmpx", "expr": "port-unreachable"}},
                        ],
                    }
                }
            )
        for chain in ("prerouting", "output"):
            rules.append(
                {
                    "rule": {
                        "chain": chain,
                        "expr": [{"vmap": {"key": _key_expr(v), "data": f"@svc_{v}"}}],
                    }
                }
            )
            # Reached only when the map had no entry: a port unhooked by an
            # update this packet raced (the next SYN meets the refusal), or
            # not TCP/UDP. Never route a VIP onwards as a plain address.
            rules.append(
                {
                    "rule": {
                        "chain": chain,
                        "expr": [
                            {
                                "match": {
                                    "op": "==",
                                    "left": _payload(v, "daddr"),
                                    "right": f"@vips_{v}",
                                }
                            },
                            {"drop": None},
                        ],
                        "comment": "VIP traffic without a service entry",
                    }
                }
            )
        rules.append(
            {
                "rule": {
                    "chain": "postrouting",
                    "expr": [
                        {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                        {
                            "match": {
                                "op": "==",
                                "left": {"concat": [_payload(v, "saddr"), _payload(v, "daddr")]},
                                "right": f"@hairpin_{v}",
                            }
                        },
                        {"masquerade": None},
                    ],
                    "comment": "hairpin: a backend reaching its own VIP",
                }
            }
        )
    return rules


def table_objects(services: Mapping[str, ServiceLb]) -> list[Obj]:
    """The whole table, for ``Nft.replace_table`` (start-up and resync).
    Order matters to nft: chains, then sets and maps, then their elements,
    then rules."""
    objs = _base_objects()
    sets: list[Obj] = []
    rules: list[Obj] = []
    elements: dict[str, list[Any]] = {}
    for name in sorted(services):
        svc = services[name]
        chains, aff_sets, svc_rules = _service_chains(svc)
        objs.extend({"chain": {"name": c}} for c in chains)
        sets.extend(aff_sets)
        rules.extend(svc_rules)
        elements.setdefault(f"vips_{svc.v}", []).append(str(svc.vip.address))
        for g in svc.groups:
            m, live = _svc_elements(svc, g)
            elements.setdefault(f"svc_{svc.v}", []).extend(m)
            elements.setdefault(f"live_{svc.v}", []).extend(live)
    for v, addrs in hairpin_elements(services.values()).items():
        if addrs:
            elements[f"hairpin_{v}"] = [_pair(a) for a in sorted(addrs)]
    objs.extend(sets)
    objs.extend({"element": {"name": k, "elem": e}} for k, e in sorted(elements.items()) if e)
    objs.extend(_base_rules())
    objs.extend(rules)
    return objs


def _cmd(verb: str, kind: str, body: Obj) -> Obj:
    return {verb: {kind: {**body, "family": FAMILY, "table": TABLE}}}


def service_update(old: ServiceLb | None, new: ServiceLb | None) -> list[Obj]:
    """nft commands that turn one service's part of the table from ``old``
    into ``new`` (either may be None), as one transaction's worth. Order:
    unhook removed ports, build chains and sets, flush and refill, drop what
    is no longer used, hook new ports in."""
    cmds: list[Obj] = []
    old_chains, old_sets, _ = _service_chains(old) if old else ([], [], [])
    new_chains, new_sets, new_rules = _service_chains(new) if new else ([], [], [])
    old_groups = {g.vport: g for g in old.groups} if old else {}
    new_groups = {g.vport: g for g in new.groups} if new else {}
    same_vip = old is not None and new is not None and old.vip.address == new.vip.address
    same_protocols = (
        same_vip and old is not None and new is not None and old.vip.protocols == new.vip.protocols
    )

    def elems(verb: str, svc: ServiceLb, groups: Iterable[Group]) -> None:
        m: list[Any] = []
        live: list[Any] = []
        for g in groups:
            gm, gl = _svc_elements(svc, g)
            m.extend(gm)
            live.extend(gl)
        if m:
            # Deleting a map element names its key only.
            cmds.append(
                _cmd(
                    verb, "element", {"name": f"svc_{svc.v}", "elem": m if verb == "add" else live}
                )
            )
            cmds.append(_cmd(verb, "element", {"name": f"live_{svc.v}", "elem": live}))

    if old is not None:
        gone = [g for p, g in old_groups.items() if p not in new_groups or not same_protocols]
        elems("delete", old, gone)
        if not same_vip:
            cmds.append(
                _cmd("delete", "element", {"name": f"vips_{old.v}", "elem": [str(old.vip.address)]})
            )
    for c in new_chains:
        cmds.append(_cmd("add", "chain", {"name": c}))
    had_sets = {s["set"]["name"] for s in old_sets}
    for s in new_sets:
        # Re-adding a live set is refused (the kernel marked it dynamic).
        if s["set"]["name"] not in had_sets:
            cmds.append(_cmd("add", "set", s["set"]))
    for c in old_chains:
        cmds.append(_cmd("flush", "chain", {"name": c}))
    for r in new_rules:
        cmds.append(_cmd("add", "rule", r["rule"]))
    kept_chains = set(new_chains)
    for c in reversed(old_chains):  # e_ chains after the s_ chain that jumps to them is flushed
        if c not in kept_chains:
            cmds.append(_cmd("delete", "chain", {"name": c}))
    kept_sets = {s["set"]["name"] for s in new_sets}
    for s in old_sets:
        if s["set"]["name"] not in kept_sets:
            cmds.append(_cmd("delete", "set", {"name": s["set"]["name"]}))
    if new is not None:
        fresh = [g for p, g in new_groups.items() if p not in old_groups or not same_protocols]
        elems("add", new, fresh)
        if not same_vip:
            cmds.append(
                _cmd("add", "element", {"name": f"vips_{new.v}", "elem": [str(new.vip.address)]})
            )
    return cmds


def hairpin_update(old: Mapping[str, set[str]], new: Mapping[str, set[str]]) -> list[Obj]:
    """Commands moving the hairpin sets from ``old`` to ``new`` addresses."""
    cmds: list[Obj] = []
    for v in ("v4", "v6"):
        gone = sorted(old.get(v, set()) - new.get(v, set()))
        added = sorted(new.get(v, set()) - old.get(v, set()))
        if gone:
            cmds.append(
                _cmd(
                    "delete", "element", {"name": f"hairpin_{v}", "elem": [_pair(a) for a in gone]}
                )
            )
        if added:
            cmds.append(
                _cmd("add", "element", {"name": f"hairpin_{v}", "elem": [_pair(a) for a in added]})
            )
    return cmds
