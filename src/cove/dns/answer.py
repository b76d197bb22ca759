"""What to answer: a pure function of (view, services, scope, query).

``resolve`` decides between an authoritative answer (with the dependencies
it was built from, for cache invalidation), forwarding upstream, or REFUSED.
Names cove owns:

- ``<name>.<network>.<domain>`` (every network from the host listener, the
  asker's networks from a gateway listener); on gateway listeners also
  ``<name>`` and ``<name>.<network>``;
- ``<svc>.service``, ``<tag>.<svc>.service``, ``_<svc>._tcp.service``,
  ``_<svc>._<tag>.service``, ``<query>.query``, ``<node>.node`` and
  ``<hex>.addr`` under the domain (Consul's forms);
- reverse names of addresses inside the networks' subnets.

Everything else under the domain is NXDOMAIN; anything else is forwarded
when the scope allows it, else REFUSED.

A service with a virtual IP (``lb/vips/<svc>``) answers A/AAAA/ANY for the
plain ``<svc>.service`` with the VIP alone, in every scope: the VIP stands
for the whole service, as a Kubernetes ClusterIP does. It is answered even
while no instance passes (like kube DNS): the kernel then rejects
connections to it at once, which fails faster than an NXDOMAIN that
resolvers would cache. SRV queries and the tag and RFC 2782 forms
(``<tag>.<svc>.service``, ``_<svc>._tcp.service``) keep answering the
passing instances, so clients that balance for themselves still can.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from cove.dns.services import ServiceInstance, ServiceSource
from cove.dns.view import DnsView, Scope, node_dep, ptr_dep, svc_dep
from cove.dns.view import name_dep as _name_dep
from cove.dns.wire import Message, Query, Rcode, Record, RRType, Soa, Srv
from cove.model import Endpoint, IPAddress


@dataclass(frozen=True, slots=True)
class AnswerConfig:
    domain: str = "cove"
    alt_domains: tuple[str, ...] = ("consul",)
    ttl: int = 0
    negative_ttl: int = 0


class Action(Enum):
    ANSWER = "answer"
    FORWARD = "forward"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class Resolution:
    action: Action
    message: Message | None = None
    deps: frozenset[str] = frozenset()
    shuffle: bool = False  # answers may be permuted and limited


_FORWARD = Resolution(Action.FORWARD)
_REFUSE = Resolution(Action.REFUSE)
_ADDR_TYPES = (RRType.A, RRType.AAAA, RRType.ANY)


def resolve(
    view: DnsView, services: ServiceSource, scope: Scope, q: Query, cfg: AnswerConfig
) -> Resolution:
    labels = q.labels
    if labels and (labels[-1] == cfg.domain or labels[-1] in cfg.alt_domains):
        return _in_domain(view, services, scope, q, cfg, labels[:-1], labels[-1])
    if len(labels) >= 2 and labels[-1] == "arpa" and labels[-2] in ("in-addr", "ip6"):
        answer = _reverse(view, scope, q, cfg)
        if answer is not None:
            return answer
    elif scope.networks is not None and labels:
        if len(labels) >= 2 and labels[-1] in scope.networks:
            return _endpoints(view, (labels[-1],), ".".join(labels[:-1]), q, cfg, cfg.domain)
        name = ".".join(labels)
        if any(name in view.names.get(n, {}) for n in scope.networks):
            return _endpoints(view, sorted(scope.networks), name, q, cfg, cfg.domain)
    return _FORWARD if scope.forward else _REFUSE


def _in_domain(
    view: DnsView,
    services: ServiceSource,
    scope: Scope,
    q: Query,
    cfg: AnswerConfig,
    rest: tuple[str, ...],
    domain: str,
) -> Resolution:
    if not rest:
        if q.qtype in (RRType.SOA, RRType.ANY):
            return _answer((_soa(domain, cfg),), frozenset(), cfg, shuffle=False)
        return _negative(Rcode.NOERROR, domain, cfg, frozenset())
    last = rest[-1]
    if last == "service":
        return _service(view, services, scope, q, cfg, rest[:-1], domain)
    if last == "query" and len(rest) == 2:
        return _query(services, scope, q, cfg, rest[0], domain)
    if last == "node" and len(rest) == 2:
        node = services.node(rest[0])
        deps = frozenset({node_dep(rest[0])})
        if node is None:
            return _negative(Rcode.NXDOMAIN, domain, cfg, deps)
        return _addresses(q, node.addresses, cfg, domain, deps)
    if last == "addr" and len(rest) == 2:
        addr = _from_hex(rest[0])
        if addr is None:
            return _negative(Rcode.NXDOMAIN, domain, cfg, frozenset())
        return _addresses(q, (addr,), cfg, domain, frozenset())
    if len(rest) >= 2:
        net = rest[-1]
        if net in view.networks and (scope.networks is None or net in scope.networks):
            return _endpoints(view, (net,), ".".join(rest[:-1]), q, cfg, domain)
    # A new network makes names valid: its event invalidates everything.
    return _negative(Rcode.NXDOMAIN, domain, cfg, frozenset())


def _endpoints(
    view: DnsView, nets: Sequence[str], name: str, q: Query, cfg: AnswerConfig, domain: str
) -> Resolution:
    deps = frozenset({_name_dep(name)})
    found: list[Endpoint] = []
    for net in nets:
        found.extend(view.names.get(net, {}).get(name, ()))
    if not found:
        return _negative(Rcode.NXDOMAIN, domain, cfg, deps)
    return _addresses(q, [a for ep in found for a in ep.addresses], cfg, domain, deps)


def _addresses(
    q: Query, addrs: Iterable[IPAddress], cfg: AnswerConfig, domain: str, deps: frozenset[str]
) -> Resolution:
    answers: list[Record] = []
    seen: set[IPAddress] = set()
    for a in addrs:
        if a in seen:
            continue
        seen.add(a)
        rtype = RRType.A if a.version == 4 else RRType.AAAA
        if q.qtype == rtype or q.qtype == RRType.ANY:
            answers.append(Record(q.name, rtype, cfg.ttl, a))
    if not answers:
        return _negative(Rcode.NOERROR, domain, cfg, deps)
    return _answer(answers, deps, cfg, shuffle=len(answers) > 1)


def _service(
    view: DnsView,
    services: ServiceSource,
    scope: Scope,
    q: Query,
    cfg: AnswerConfig,
    rest: tuple[str, ...],
    domain: str,
) -> Resolution:
    tag: str | None = None
    vip: IPAddress | None = None
    if len(rest) == 1:
        svc = rest[0]
        vip = view.vips.get(svc)
    elif len(rest) == 2 and rest[0].startswith("_") and rest[1].startswith("_"):
        svc, tag = rest[0][1:], rest[1][1:]
        if tag in ("tcp", "udp"):
            tag = None  # RFC 2782's protocol label: every instance
    elif len(rest) == 2:
        tag, svc = rest
    else:
        return _negative(Rcode.NXDOMAIN, domain, cfg, frozenset())
    deps = frozenset({svc_dep(svc)})
    if vip is not None and q.qtype != RRType.SRV:
        return _addresses(q, (vip,), cfg, domain, deps)
    instances = [i for i in services.passing(svc) if _visible(i, scope, tag)]
    if not instances:
        # With a VIP the name exists (it has an A or AAAA record): NODATA,
        # never an NXDOMAIN that would hide the VIP from caching resolvers.
        rcode = Rcode.NXDOMAIN if vip is None else Rcode.NOERROR
        return _negative(rcode, domain, cfg, deps)
    if q.qtype in _ADDR_TYPES:
        return _addresses(q, (i.address for i in instances), cfg, domain, deps)
    if q.qtype != RRType.SRV:
        return _negative(Rcode.NOERROR, domain, cfg, deps)
    return _srv(q, instances, cfg, domain, deps)


def _query(
    services: ServiceSource, scope: Scope, q: Query, cfg: AnswerConfig, name: str, domain: str
) -> Resolution:
    """``<query>.query.<domain>``: what prepared query ``<query>`` (an ID,
    a name, or a name a template matches) executes to, as Consul's DNS."""
    lookup = getattr(services, "query", None)
    found = lookup(name) if lookup is not None else None
    if found is None:
        # A new query changes every answer (ServiceChange.ALL): no deps needed.
        return _negative(Rcode.NXDOMAIN, domain, cfg, frozenset())
    service, instances = found
    deps = frozenset({svc_dep(service)})
    instances = [i for i in instances if _visible(i, scope, None)]
    if not instances:
        return _negative(Rcode.NXDOMAIN, domain, cfg, deps)
    if q.qtype in _ADDR_TYPES:
        return _addresses(q, (i.address for i in instances), cfg, domain, deps)
    if q.qtype != RRType.SRV:
        return _negative(Rcode.NOERROR, domain, cfg, deps)
    return _srv(q, instances, cfg, domain, deps)


def _srv(
    q: Query,
    instances: Sequence[ServiceInstance],
    cfg: AnswerConfig,
    domain: str,
    deps: frozenset[str],
) -> Resolution:
    answers: list[Record] = []
    extra: dict[str, Record] = {}
    for i in instances:
        target = f"{_to_hex(i.address)}.addr.{domain}"
        answers.append(Record(q.name, RRType.SRV, cfg.ttl, Srv(1, 1, i.port, target)))
        rtype = RRType.A if i.address.version == 4 else RRType.AAAA
        extra.setdefault(target, Record(target, rtype, cfg.ttl, i.address))
    msg = Message(Rcode.NOERROR, tuple(answers), (), tuple(extra.values()))
    return Resolution(Action.ANSWER, msg, deps, shuffle=len(answers) > 1)


def _visible(i: ServiceInstance, scope: Scope, tag: str | None) -> bool:
    if tag is not None and tag not in i.tags:
        return False
    # A container sees instances on its own networks (or on none: external).
    return scope.networks is None or not i.network or i.network in scope.networks


def _reverse(view: DnsView, scope: Scope, q: Query, cfg: AnswerConfig) -> Resolution | None:
    addr = _reverse_address(q.labels)
    if addr is None:
        return None
    nets = view.networks.keys() if scope.networks is None else scope.networks
    owned = any(
        s.cidr.version == addr.version and addr in s.cidr
        for n in nets
        if (net := view.networks.get(n)) is not None
        for s in net.subnets
    )
    if not owned:
        return None
    apex = "in-addr.arpa" if addr.version == 4 else "ip6.arpa"
    deps = frozenset({ptr_dep(addr)})
    answers: list[Record] = []
    for ep in view.addrs.get(addr, ()):
        if scope.networks is None:
            target = f"{ep.container_name.lower()}.{ep.network}.{cfg.domain}"
        elif ep.network in scope.networks:
            target = f"{ep.container_name.lower()}.{ep.network}"
        else:
            continue
        answers.append(Record(q.name, RRType.PTR, cfg.ttl, target))
    if not answers:
        return _negative(Rcode.NXDOMAIN, apex, cfg, deps)
    if q.qtype not in (RRType.PTR, RRType.ANY):
        return _negative(Rcode.NOERROR, apex, cfg, deps)
    return _answer(answers, deps, cfg, shuffle=False)


def _reverse_address(labels: tuple[str, ...]) -> IPAddress | None:
    parts = labels[:-2]
    try:
        if labels[-2] == "in-addr" and len(parts) == 4:
            if not all(p.isdigit() and len(p) <= 3 for p in parts):
                return None
            return ipaddress.IPv4Address(".".join(reversed(parts)))
        if labels[-2] == "ip6" and len(parts) == 32:
            nibbles = "".join(reversed(parts))
            return ipaddress.IPv6Address(int(nibbles, 16))
    except ValueError:
        return None
    return None


def _to_hex(addr: IPAddress) -> str:
    return addr.packed.hex()


def _from_hex(text: str) -> IPAddress | None:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw)
    if len(raw) == 16:
        return ipaddress.IPv6Address(raw)
    return None


def _soa(domain: str, cfg: AnswerConfig) -> Record:
    soa = Soa(f"ns.{domain}", f"hostmaster.{domain}", 1, 3600, 600, 86400, cfg.negative_ttl)
    return Record(domain, RRType.SOA, cfg.negative_ttl, soa)


def _negative(rcode: Rcode, apex: str, cfg: AnswerConfig, deps: frozenset[str]) -> Resolution:
    msg = Message(rcode, (), (_soa(apex, cfg),))
    return Resolution(Action.ANSWER, msg, deps)


def _answer(
    answers: Sequence[Record], deps: frozenset[str], cfg: AnswerConfig, *, shuffle: bool
) -> Resolution:
    return Resolution(Action.ANSWER, Message(Rcode.NOERROR, tuple(answers)), deps, shuffle)
