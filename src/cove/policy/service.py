"""Policy operations over the store: add, list, remove, switch default-deny,
and ``test`` (the same decision the kernel makes, explained).

Each operation is one store write (a transaction with compares), so bad
input or a race leaves nothing half applied.
"""

from __future__ import annotations

import builtins
import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from cove.clock import Clock
from cove.errors import CasFailed, InvalidArgument, NotFound
from cove.model import CONTAINERS, ENDPOINTS, NETWORKS, Endpoint, IPAddress, Network
from cove.policy import compile as pc
from cove.policy.intentions import IntentionService
from cove.policy.model import L4, RULES, PortSpec, Rule, Selector, SelectorKind
from cove.registry.keys import SERVICES
from cove.runtime.keys import containers_of, find_container
from cove.store.base import Compare, Put, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Verdict:
    """``policy test`` for one pair of addresses."""

    source: str
    dest: str
    src_addr: IPAddress
    dst_addr: IPAddress
    decision: pc.Decision

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.source,
            "to": self.dest,
            "from_address": str(self.src_addr),
            "to_address": str(self.dst_addr),
            "allowed": self.decision.allowed,
            "reason": self.decision.reason,
            "rule": self.decision.rule,
            "intention": self.decision.intention,
        }


class PolicyService:
    def __init__(self, store: Store, clock: Clock, node: str | None = None) -> None:
        """``node``: whose container records may be read for the labels
        of endpoints written before endpoints carried them (None: any's)."""
        self._store = store
        self._clock = clock
        self._containers = CONTAINERS if node is None else containers_of(node)
        # Decoded records by key, with the revision they were decoded at:
        # a recompile after one attach decodes that one record, not all.
        # Replaced whole by each reader; a race only costs a decode.
        self._endpoints: dict[str, tuple[int, Endpoint]] = {}
        self._labels: dict[str, tuple[int, str, dict[str, str]]] = {}

    # -- reading the world ---------------------------------------------------

    def networks(self) -> builtins.list[Network]:
        out = []
        for kv in self._store.range(NETWORKS).kvs:
            try:
                out.append(Network.from_json(json.loads(kv.value)))
            except (ValueError, KeyError) as exc:
                log.warning("unreadable network %s: %s", kv.key, exc)
        return out

    def members(self) -> builtins.list[pc.Member]:
        """Every endpoint of the cluster, with its container's labels (in
        the endpoint; for an older one, from its container's record when it
        is one this service may read, else none)."""
        seen_eps = self._endpoints
        ep_cache: dict[str, tuple[int, Endpoint]] = {}
        for kv in self._store.range(ENDPOINTS).kvs:
            got = seen_eps.get(kv.key)
            if got is None or got[0] != kv.mod_revision:
                try:
                    got = (kv.mod_revision, Endpoint.from_json(json.loads(kv.value)))
                except (ValueError, KeyError) as exc:
                    log.warning("unreadable endpoint %s: %s", kv.key, exc)
                    continue
            ep_cache[kv.key] = got
        self._endpoints = ep_cache
        labels = {ep.container_name: dict(ep.labels) for _, ep in ep_cache.values() if ep.labels}
        if any(not ep.labels for _, ep in ep_cache.values()):
            for name, found in self._record_labels().items():
                labels.setdefault(name, found)
        return pc.members_from((ep for _, ep in ep_cache.values()), labels)

    def _record_labels(self) -> dict[str, dict[str, str]]:
        """Labels by container name from the container records it may read
        (decoded once per change of a record)."""
        seen_labels = self._labels
        label_cache: dict[str, tuple[int, str, dict[str, str]]] = {}
        labels: dict[str, dict[str, str]] = {}
        for kv in self._store.range(self._containers).kvs:
            hit = seen_labels.get(kv.key)
            if hit is None or hit[0] != kv.mod_revision:
                try:
                    data = json.loads(kv.value)
                    name = str(data["name"])
                    found = {str(k): str(v) for k, v in (data.get("labels") or {}).items()}
                except (ValueError, KeyError, AttributeError, TypeError):
                    continue
                hit = (kv.mod_revision, name, found)
            label_cache[kv.key] = hit
            labels[hit[1]] = hit[2]
        self._labels = label_cache
        return labels

    def rules(self, network: str | None = None) -> builtins.list[Rule]:
        out = []
        for kv in self._store.range(RULES).kvs:
            try:
                rule = Rule.from_json(json.loads(kv.value))
            except (ValueError, InvalidArgument) as exc:
                log.warning("unreadable policy rule %s: %s", kv.key, exc)
                continue
            if network is None or rule.network == network:
                out.append(rule)
        return sorted(out, key=lambda r: (r.network, r.created, r.id))

    def instances(self) -> dict[str, set[IPAddress]]:
        """Registered service instances' IP addresses by lower-case
        service name (the Consul catalog; DNS-name addresses skipped)."""
        out: dict[str, set[IPAddress]] = {}
        for kv in self._store.range(SERVICES).kvs:
            try:
                data = json.loads(kv.value)
                addr = pc.parse_address(str(data.get("Address") or ""))
                name = str(data["Service"]).lower()
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            out.setdefault(name, set()).add(addr)
        return out

    def model(self) -> pc.Model:
        return self._model(self.members())

    def _model(self, members: builtins.list[pc.Member]) -> pc.Model:
        return pc.build(
            self.networks(),
            members,
            self.rules(),
            IntentionService(self._store).list(),
            self.instances(),
        )

    # -- writing --------------------------------------------------------------

    def allow(
        self,
        network: str,
        source: str,
        dest: str,
        ports: Sequence[str] = (),
        description: str = "",
    ) -> Rule:
        """Add an allow rule. Raises ``NotFound`` for an unknown network,
        ``InvalidArgument`` for a malformed selector or port, or a bare name
        that is neither a container nor a service (a typo, most likely:
        ``container:NAME`` / ``service:NAME`` name ones not there yet)."""
        net_kv = self._store.get(NETWORKS + network)
        if net_kv is None:
            raise NotFound(f"network {network} not found", network=network)
        src = Selector.parse(source)
        dst = Selector.parse(dest)
        specs = tuple(PortSpec.parse(p) for p in ports)
        members = self.members()
        for sel, role in ((src, "--from"), (dst, "--to")):
            if sel.kind is SelectorKind.NAME and not self._name_known(sel.value, members):
                raise InvalidArgument(
                    f"unknown selector {sel.value!r} for {role}: no container or service has "
                    f"that name (write container:{sel.value} or service:{sel.value} for one "
                    "that does not exist yet)",
                    selector=sel.value,
                )
        rule = Rule(
            id=secrets.token_hex(4),
            network=network,
            source=src,
            dest=dst,
            ports=specs,
            created=self._clock.time(),
            description=description,
        )
        result = self._store.txn(
            # The network must still be the one we checked.
            [
                Compare.mod_is(NETWORKS + network, net_kv.mod_revision),
                Compare.absent(RULES + rule.id),
            ],
            [Put(RULES + rule.id, json.dumps(rule.to_json()).encode())],
        )
        if not result.succeeded:
            raise CasFailed("the network changed while the rule was added; try again")
        log.info("policy rule %s on %s: %s -> %s", rule.id, network, src, dst)
        return rule

    def _name_known(self, name: str, members: Sequence[pc.Member]) -> bool:
        if any(m.name == name or name in m.services for m in members):
            return True
        return find_container(self._store, name) is not None

    def remove(self, rule_id: str) -> None:
        """Raises ``NotFound`` for an unknown rule id."""
        if self._store.get(RULES + rule_id) is None:
            raise NotFound(f"policy rule {rule_id} not found", rule=rule_id)
        self._store.delete(RULES + rule_id)

    def set_default_deny(self, network: str, on: bool) -> Network:
        """Switch default-deny on an existing network (one CAS write)."""
        for _ in range(5):
            kv = self._store.get(NETWORKS + network)
            if kv is None:
                raise NotFound(f"network {network} not found", network=network)
            net = replace(Network.from_json(json.loads(kv.value)), default_deny=on)
            result = self._store.txn(
                [Compare.mod_is(NETWORKS + network, kv.mod_revision)],
                [Put(NETWORKS + network, json.dumps(net.to_json()).encode())],
            )
            if result.succeeded:
                return net
        raise CasFailed(f"network {network} kept changing; try again")

    # -- explaining -----------------------------------------------------------

    def test(self, source: str, dest: str, port: str) -> builtins.list[Verdict]:
        """Would a new connection from ``source`` to ``dest`` on ``port``
        (``PORT[/PROTO]``) pass? One verdict per address pair. ``source``
        and ``dest`` are selectors or IP addresses. Raises
        ``InvalidArgument`` when either names nothing."""
        spec = PortSpec.parse(port)
        if spec.first != spec.last:
            raise InvalidArgument("policy test takes one port, not a range")
        members = self.members()
        model = self._model(members)
        srcs = self._addresses(source, members, "--from")
        dsts = self._addresses(dest, members, "--to")
        out = []
        for s_label, s in srcs:
            for d_label, d in dsts:
                if s.version != d.version or s == d:
                    continue
                out.append(
                    Verdict(s_label, d_label, s, d, pc.decide(model, s, d, spec.proto, spec.first))
                )
        if not out:
            raise InvalidArgument("the two sides share no address family")
        return out

    @staticmethod
    def _addresses(
        text: str, members: Sequence[pc.Member], role: str
    ) -> builtins.list[tuple[str, IPAddress]]:
        try:
            addr = pc.parse_address(text)
        except ValueError:
            pass
        else:
            return [(text, addr)]
        chosen = pc.select(Selector.parse(text), members)
        if not chosen:
            raise InvalidArgument(f"{role} {text!r} matches no container", selector=text)
        return [(f"{m.name}@{m.network}", a) for m in chosen for a in m.addresses]


def proto_of(text: str) -> L4:
    try:
        return L4(text.lower())
    except ValueError as exc:
        raise InvalidArgument(f"invalid protocol {text!r}: tcp or udp") from exc
