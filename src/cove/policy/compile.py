"""Policy, resolved and compiled (pure): selectors to addresses, then to the
nft table ``inet cove_policy``, and the same decision for ``policy test``.

The forward chain runs before ``inet cove`` (priority -10), and sees
traffic between containers of one bridge thanks to br_netfilter::

    ct state established,related accept          replies of allowed flows
    ip daddr @deny_v4 jump ingress               into a default-deny network
    ingress:
      ip saddr != @cove_v4 ct mark & P == P accept
                                                 from outside cove, through a
                                                 published port (marked P there)
      ip saddr . ip daddr @self_v4 accept        a container to itself (VIP hairpin)
      ip saddr {..} ip daddr {..} [th dport] accept   one per rule
      reject (TCP reset / ICMP admin-prohibited)

Any other source is judged like a container's: an address that is no
known endpoint (another host, or a container forging one) gets through only
by a rule. The host's own connections never pass the forward hook.

Default-deny networks are matched by subnet, not by member address, so a
container that has just started is denied until a rule names it: there is
no moment in which denied traffic passes. An ``accept`` here does not
override drops of other tables (network isolation stays).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cove.model import Endpoint, IPAddress, IPNetwork, Network
from cove.policy.intentions import ALLOW, WILDCARD, Intention, sort_key
from cove.policy.model import L4, Rule, Selector, SelectorKind
from cove.runtime.ports import PUBLISHED_MARK

FAMILY = "inet"
TABLE = "cove_policy"

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Member:
    """A container on one network, as selectors see it."""

    name: str
    network: str
    addresses: tuple[IPAddress, ...]
    services: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, sel: Selector, *, name_is_service: bool) -> bool:
        if sel.kind is SelectorKind.ANY:
            return True
        if sel.kind is SelectorKind.CONTAINER:
            return self.name == sel.value
        if sel.kind is SelectorKind.SERVICE:
            return sel.value in self.services
        if sel.kind is SelectorKind.NAME:
            return sel.value in self.services if name_is_service else self.name == sel.value
        return all(self.labels.get(k) == v for k, v in sel.labels)


def members_from(
    endpoints: Iterable[Endpoint], labels: Mapping[str, Mapping[str, str]]
) -> list[Member]:
    """Members from endpoint records and container labels by name."""
    out = []
    for ep in endpoints:
        services = frozenset(s.rpartition(":")[0].lower() for s in ep.services if ":" in s)
        name = ep.container_name.lower()
        out.append(
            Member(
                name, ep.network, ep.addresses, services, dict(labels.get(ep.container_name, {}))
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class Resolved:
    rule: Rule
    sources: frozenset[IPAddress]
    dests: frozenset[IPAddress]


@dataclass(frozen=True, slots=True)
class ResolvedIntention:
    """An intention's instance addresses: sources on any network, and
    destinations grouped by their network (one counted nft rule each)."""

    intention: Intention
    sources: frozenset[IPAddress]
    dests: tuple[tuple[str, frozenset[IPAddress]], ...]

    def covers(self, src: IPAddress, dst: IPAddress) -> bool:
        return src in self.sources and any(dst in addrs for _, addrs in self.dests)


@dataclass(frozen=True, slots=True)
class Model:
    """Everything the table and the evaluator decide from."""

    deny: tuple[tuple[str, IPNetwork], ...]  # (network name, subnet) with default-deny
    cove: tuple[IPNetwork, ...]  # every cove network's subnets
    rules: tuple[Resolved, ...]
    selves: frozenset[IPAddress] = frozenset()  # member addresses: may reach themselves
    intentions: tuple[ResolvedIntention, ...] = ()  # in precedence order


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    rule: str | None = None
    intention: str | None = None


def _is_container_name(sel: Selector, members: Iterable[Member]) -> bool:
    return any(m.name == sel.value for m in members)


def select(sel: Selector, members: Iterable[Member]) -> list[Member]:
    """The members a selector names. A bare NAME is a container when one
    has that name, else a service."""
    pool = list(members)
    as_service = sel.kind is SelectorKind.NAME and not _is_container_name(sel, pool)
    return [m for m in pool if m.matches(sel, name_is_service=as_service)]


def resolve_intentions(
    intentions: Iterable[Intention],
    members: Iterable[Member],
    instances: Mapping[str, Iterable[IPAddress]],
) -> tuple[ResolvedIntention, ...]:
    """A service's instances are its registered instances whose address
    is a container endpoint's (matched by address); ``*`` is every such
    instance of any service. ``instances`` maps a lower-case service name
    to its instances' addresses."""
    network_of = {a: m.network for m in members for a in m.addresses}
    by_service = {
        name.lower(): frozenset(a for a in addrs if a in network_of)
        for name, addrs in instances.items()
    }
    every = frozenset(a for addrs in by_service.values() for a in addrs)

    def of(name: str) -> frozenset[IPAddress]:
        return every if name == WILDCARD else by_service.get(name.lower(), frozenset())

    out = []
    for i in sorted(intentions, key=sort_key):
        nets: dict[str, set[IPAddress]] = {}
        for a in of(i.dest):
            nets.setdefault(network_of[a], set()).add(a)
        dests = tuple((n, frozenset(nets[n])) for n in sorted(nets))
        out.append(ResolvedIntention(i, of(i.source), dests))
    return tuple(out)


def build(
    networks: Iterable[Network],
    members: Iterable[Member],
    rules: Iterable[Rule],
    intentions: Iterable[Intention] = (),
    instances: Mapping[str, Iterable[IPAddress]] | None = None,
) -> Model:
    nets = sorted(networks, key=lambda n: n.name)
    pool = list(members)
    known = {n.name for n in nets}
    resolved = []
    for rule in sorted(rules, key=lambda r: (r.network, r.created, r.id)):
        if rule.network not in known:
            continue
        src = {a for m in select(rule.source, pool) for a in m.addresses}
        on_net = [m for m in pool if m.network == rule.network]
        dst = {a for m in select(rule.dest, on_net) for a in m.addresses}
        resolved.append(Resolved(rule, frozenset(src), frozenset(dst)))
    return Model(
        deny=tuple((n.name, s.cidr) for n in nets if n.default_deny for s in n.subnets),
        cove=tuple(s.cidr for n in nets for s in n.subnets),
        rules=tuple(resolved),
        selves=frozenset(a for m in pool for a in m.addresses),
        intentions=resolve_intentions(intentions, pool, instances or {}),
    )


def decide(model: Model, src: IPAddress, dst: IPAddress, proto: L4, port: int) -> Decision:
    """What the compiled chain does with a new connection (same order)."""
    net = next((name for name, cidr in model.deny if _in(dst, cidr)), None)
    outside = not any(_in(src, c) for c in model.cove)
    if src == dst and src in model.selves:
        return Decision(True, "a container may always reach itself (through a VIP too)")
    if net is None and not any(_in(dst, c) for c in model.cove):
        return Decision(True, "the destination is on no cove network")
    for ri in model.intentions:
        if ri.covers(src, dst):
            i = ri.intention
            verb = "allowed" if i.action == ALLOW else "denied"
            return Decision(
                i.action == ALLOW,
                f"{verb} by intention {i.label()} (id {i.id}, precedence {i.precedence})",
                intention=i.id,
            )
    if net is None:
        return Decision(True, "the destination's network does not deny by default")
    for r in model.rules:
        if r.rule.network != net or src not in r.sources or dst not in r.dests:
            continue
        if r.rule.ports and not any(p.matches(proto, port) for p in r.rule.ports):
            continue
        return Decision(True, f"allowed by rule {r.rule.id}", r.rule.id)
    if outside:
        return Decision(
            False,
            f"denied by default on network {net!r}: the source is no container of a cove"
            " network (only published ports let it in)",
        )
    return Decision(False, f"denied by default on network {net!r}")


def _in(addr: IPAddress, net: IPNetwork) -> bool:
    return addr.version == net.version and addr in net


# -- nft ------------------------------------------------------------------


def _l3(version: int) -> str:
    return "ip" if version == 4 else "ip6"


def _addr(version: int, fieldname: str) -> Obj:
    return {"payload": {"protocol": _l3(version), "field": fieldname}}


def _prefix(net: IPNetwork) -> Obj:
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _set_of(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else {"set": values}


def compile_table(model: Model) -> list[Obj]:
    objs: list[Obj] = [
        {
            "chain": {
                "name": "forward",
                "type": "filter",
                "hook": "forward",
                "prio": -10,
                "policy": "accept",
            }
        },
        {"chain": {"name": "ingress"}},
        {"chain": {"name": "intentions"}},
    ]
    for v, t in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        deny = [_prefix(c) for _, c in model.deny if c.version == v]
        cove = [_prefix(c) for c in model.cove if c.version == v]
        objs.append({"set": {"name": f"deny_v{v}", "type": t, "flags": ["interval"]}})
        objs.append({"set": {"name": f"cove_v{v}", "type": t, "flags": ["interval"]}})
        if deny:
            objs.append({"element": {"name": f"deny_v{v}", "elem": deny}})
        if cove:
            objs.append({"element": {"name": f"cove_v{v}", "elem": cove}})
        objs.append({"set": {"name": f"self_v{v}", "type": [t, t]}})
        selves = sorted(str(a) for a in model.selves if a.version == v)
        if selves:
            elems = [{"concat": [a, a]} for a in selves]
            objs.append({"element": {"name": f"self_v{v}", "elem": elems}})
    est = {
        "match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}
    }
    objs.append({"rule": {"chain": "forward", "expr": [est, {"accept": None}]}})
    for v in (4, 6):
        objs.append(
            {
                "rule": {
                    "chain": "forward",
                    "expr": [
                        {"match": {"op": "==", "left": _addr(v, "daddr"), "right": f"@deny_v{v}"}},
                        {"jump": {"target": "ingress"}},
                    ],
                }
            }
        )
    for v in (4, 6):
        # Open networks: only intentions can deny (their chain returns
        # to accept when none matches).
        objs.append(
            {
                "rule": {
                    "chain": "forward",
                    "expr": [
                        {"match": {"op": "==", "left": _addr(v, "daddr"), "right": f"@cove_v{v}"}},
                        {"jump": {"target": "intentions"}},
                    ],
                }
            }
        )
    for v in (4, 6):
        objs.append(
            {
                "rule": {
                    "chain": "ingress",
                    "expr": [
                        {"match": {"op": "!=", "left": _addr(v, "saddr"), "right": f"@cove_v{v}"}},
                        {
                            "match": {
                                "op": "==",
                                "left": {"&": [{"ct": {"key": "mark"}}, PUBLISHED_MARK]},
                                "right": PUBLISHED_MARK,
                            }
                        },
                        {"accept": None},
                    ],
                    "comment": "from outside cove, through a published port",
                }
            }
        )
        pair = {"concat": [_addr(v, "saddr"), _addr(v, "daddr")]}
        objs.append(
            {
                "rule": {
                    "chain": "ingress",
                    "expr": [
                        {"match": {"op": "==", "left": pair, "right": f"@self_v{v}"}},
                        {"accept": None},
                    ],
                    "comment": "a container reaching itself (hairpin through a VIP)",
                }
            }
        )
        objs.append(
            {
                "rule": {
                    "chain": "intentions",
                    "expr": [
                        {"match": {"op": "==", "left": pair, "right": f"@self_v{v}"}},
                        {"accept": None},
                    ],
                }
            }
        )
    objs.append({"rule": {"chain": "ingress", "expr": [{"jump": {"target": "intentions"}}]}})
    for ri in model.intentions:
        objs.extend(_intention_objects(ri))
    for r in model.rules:
        objs.extend(_rule_objects(r))
    for name, cidr in model.deny:  # counts, per network, what the rejects below drop
        objs.append(
            {
                "rule": {
                    "chain": "ingress",
                    "expr": [
                        {
                            "match": {
                                "op": "==",
                                "left": _addr(cidr.version, "daddr"),
                                "right": _prefix(cidr),
                            }
                        },
                        {"counter": None},
                    ],
                    "comment": f"{DEFAULT_DENY} {name}",
                }
            }
        )
    objs.extend(_rejects("ingress", [], DEFAULT_DENY))
    return objs


DEFAULT_DENY = "default deny"
INTENTION = "intention"
_TCP = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}


def _rejects(chain: str, match: list[Obj], comment: str) -> list[Obj]:
    """Counted rejects: a TCP reset for TCP, ICMP admin-prohibited else."""
    return [
        {
            "rule": {
                "chain": chain,
                "expr": [*match, _TCP, {"counter": None}, {"reject": {"type": "tcp reset"}}],
                "comment": comment,
            }
        },
        {
            "rule": {
                "chain": chain,
                "expr": [
                    *match,
                    {"counter": None},
                    {"reject": {"type": "icmpx", "expr": "admin-prohibited"}},
                ],
                "comment": comment,
            }
        },
    ]


def _intention_objects(ri: ResolvedIntention) -> list[Obj]:
    """Comment ``intention <id> <action> <network>``: counters are read
    back by it (``counters``)."""
    out: list[Obj] = []
    i = ri.intention
    for network, dests in ri.dests:
        for v in (4, 6):
            src = sorted(str(a) for a in ri.sources if a.version == v)
            dst = sorted(str(a) for a in dests if a.version == v)
            if not src or not dst:
                continue
            match = [
                {"match": {"op": "==", "left": _addr(v, "saddr"), "right": _set_of(list(src))}},
                {"match": {"op": "==", "left": _addr(v, "daddr"), "right": _set_of(list(dst))}},
            ]
            comment = f"{INTENTION} {i.id} {i.action} {network}"
            if i.action == ALLOW:
                out.append(
                    {
                        "rule": {
                            "chain": "intentions",
                            "expr": [*match, {"counter": None}, {"accept": None}],
                            "comment": comment,
                        }
                    }
                )
            else:
                out.extend(_rejects("intentions", match, comment))
    return out


@dataclass(frozen=True, slots=True)
class Count:
    """Packets one policy decision counted (read back from the table)."""

    network: str
    rule: str  # "default" or "intention:<id>"
    action: str  # "deny" or "allow"
    packets: int


def counters(listed: Iterable[Obj]) -> list[Count]:
    """Drop and accept counts from ``nft -j list table`` output of this
    table, summed per (network, rule, action)."""
    sums: dict[tuple[str, str, str], int] = {}
    for obj in listed:
        rule = obj.get("rule")
        if not isinstance(rule, dict):
            continue
        words = str(rule.get("comment") or "").split()
        packets = sum(
            int(e["counter"].get("packets", 0))
            for e in rule.get("expr") or ()
            if isinstance(e, dict) and isinstance(e.get("counter"), dict)
        )
        if len(words) == 4 and words[0] == INTENTION:
            key = (words[3], f"{INTENTION}:{words[1]}", words[2])
        elif len(words) == 3 and " ".join(words[:2]) == DEFAULT_DENY:
            key = (words[2], "default", "deny")
        else:
            continue
        sums[key] = sums.get(key, 0) + packets
    return [Count(n, r, a, p) for (n, r, a), p in sorted(sums.items())]


def _rule_objects(r: Resolved) -> list[Obj]:
    out: list[Obj] = []
    for v in (4, 6):
        src = sorted(str(a) for a in r.sources if a.version == v)
        dst = sorted(str(a) for a in r.dests if a.version == v)
        if not src or not dst:
            continue
        base = [
            {"match": {"op": "==", "left": _addr(v, "saddr"), "right": _set_of(list(src))}},
            {"match": {"op": "==", "left": _addr(v, "daddr"), "right": _set_of(list(dst))}},
        ]
        if not r.rule.ports:
            out.append(
                {
                    "rule": {
                        "chain": "ingress",
                        "expr": [*base, {"counter": None}, {"accept": None}],
                        "comment": f"rule {r.rule.id}",
                    }
                }
            )
            continue
        for proto in (L4.TCP, L4.UDP):
            ports: list[Any] = [
                p.first if p.first == p.last else {"range": [p.first, p.last]}
                for p in r.rule.ports
                if p.proto is proto
            ]
            if not ports:
                continue
            out.append(
                {
                    "rule": {
                        "chain": "ingress",
                        "expr": [
                            *base,
                            {
                                "match": {
                                    "op": "==",
                                    "left": {
                                        "payload": {"protocol": proto.value, "field": "dport"}
                                    },
                                    "right": _set_of(ports),
                                }
                            },
                            {"counter": None},
                            {"accept": None},
                        ],
                        "comment": f"rule {r.rule.id}",
                    }
                }
            )
    return out


def digest(objs: list[Obj]) -> str:
    return hashlib.sha256(json.dumps(objs, sort_keys=True).encode()).hexdigest()


def parse_address(text: str) -> IPAddress:
    return ipaddress.ip_address(text)
