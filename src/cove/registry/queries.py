"""Catalog and health reads, answered in Consul's JSON shapes.

Each read returns an ``Answer``: the data, its index (the highest mod
revision of what it covers), the store revision it was read at and the key
prefixes a blocking query on it must watch. Decoded store values are cached
by (key, mod revision), so a hot health query does not re-parse a thousand
unchanged instances; with an in-process store a whole health answer is kept
for as long as the store's revision stays where it was read (the blocking
queries a write wakes all ask at the same revision).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from cove.codec import dumps, loads
from cove.registry import types as t
from cove.registry.txn import in_process
from cove.store.base import KeyValue, Store

_CACHE_LIMIT = 200_000
_ANSWERS_LIMIT = 256  # whole health answers kept for the current revision

_HealthKey = tuple[str, tuple[str, ...], bool]


@dataclass(frozen=True, slots=True)
class Answer:
    """``data`` may share objects with the registry's caches: read it, never
    mutate it."""

    data: Any
    index: int
    revision: int
    prefixes: tuple[str, ...]
    found: bool = True
    raw: bytes | None = None  # ``data`` already rendered as JSON, when cheap to keep


class Decoded:
    """JSON store values decoded once per (key, mod revision)."""

    def __init__(self, limit: int = _CACHE_LIMIT) -> None:
        self._limit = limit
        self._cache: dict[str, tuple[int, dict[str, Any]]] = {}

    def __call__(self, kv: KeyValue) -> dict[str, Any]:
        hit = self._cache.get(kv.key)
        if hit is not None and hit[0] == kv.mod_revision:
            return hit[1]
        data: dict[str, Any] = loads(kv.value)
        if len(self._cache) >= self._limit:
            self._cache.clear()
        self._cache[kv.key] = (kv.mod_revision, data)
        return data


class Queries:
    def __init__(self, store: Store, datacenter: str) -> None:
        self._store = store
        self._dc = datacenter
        self._decode = Decoded()
        # Health entries rendered once per (instance, node, checks) revision:
        # a hot query over a thousand unchanged instances only joins bytes.
        self._rendered: dict[
            str, tuple[int, tuple[int, ...], tuple[int, ...], Any, bytes, bool]
        ] = {}
        # Whole answers, all read at one revision: with an in-process store
        # an unchanged revision means an unchanged answer, and asking costs
        # no round trip (with etcd it would).
        self._answers: dict[_HealthKey, Answer] = {}
        self._answers_at = 0
        self._keep_answers = in_process(store)

    # -- helpers -------------------------------------------------------------

    def _range(self, prefix: str) -> tuple[list[tuple[KeyValue, dict[str, Any]]], int]:
        rr = self._store.range(prefix)
        return [(kv, self._decode(kv)) for kv in rr.kvs], rr.revision

    def _node(self, name: str, nodes: dict[str, tuple[KeyValue, dict[str, Any]] | None]) -> Any:
        if name not in nodes:
            kv = self._store.get(t.node_key(name))
            nodes[name] = (kv, self._decode(kv)) if kv else None
        return nodes[name]

    def _node_check_json(self, node: str, checks: list[tuple[KeyValue, dict[str, Any]]]) -> Any:
        out = [_with_index(kv, d) for kv, d in checks]
        if not any(d["CheckID"] == t.SERF_CHECK for _, d in checks):
            # The agent's lease ran out and took its serfHealth with it.
            out.insert(
                0,
                {
                    **t.HealthCheck(
                        id=t.SERF_CHECK,
                        name="Serf Health Status",
                        node=node,
                        status=t.Status.CRITICAL,
                        output="Agent not live or unreachable",
                    ).to_json(),
                    "CreateIndex": 0,
                    "ModifyIndex": 0,
                },
            )
        return out

    # -- catalog ---------------------------------------------------------------

    def services(self, predicate: Callable[[Any], bool] | None = None) -> Answer:
        """Service names and their tags. With ``predicate`` (a compiled
        ?filter) only the instances it keeps count, judged as the catalog's
        ServiceNodes, as Consul filters them (agent/consul/catalog_endpoint.go,
        ListServices)."""
        found, rev = self._range(t.SERVICES)
        tags: dict[str, list[str]] = {}
        nodes: dict[str, Any] = {}
        index = _max_rev(found)
        for kv, d in found:
            if predicate is not None:
                node = self._node(d["Node"], nodes)
                if node is None:
                    continue
                index = max(index, node[0].mod_revision)
                if not predicate(_service_node_json(kv, d, node[1], self._dc)):
                    continue
            have = tags.setdefault(d["Service"], [])
            have.extend(x for x in d.get("Tags", ()) if x not in have)
        prefixes = (t.SERVICES, t.NODES) if predicate is not None else (t.SERVICES,)
        return Answer(tags, index, rev, prefixes)

    def service_nodes(self, name: str, tags: Sequence[str] = ()) -> Answer:
        found, rev = self._range(t.service_prefix(name))
        nodes: dict[str, Any] = {}
        out = []
        index = _max_rev(found)
        for kv, d in found:
            if not _has_tags(d, tags):
                continue
            node = self._node(d["Node"], nodes)
            if node is None:
                continue
            index = max(index, node[0].mod_revision)
            out.append(_service_node_json(kv, d, node[1], self._dc))
        node_keys = tuple(t.node_key(n) for n in nodes)
        return Answer(out, index, rev, (t.service_prefix(name), *node_keys))

    def nodes(self) -> Answer:
        found, rev = self._range(t.NODES)
        out = [_node_json(kv, d, self._dc) for kv, d in found]
        return Answer(out, _max_rev(found), rev, (t.NODES,))

    def node(self, name: str) -> Answer:
        prefixes = (t.node_key(name), t.SERVICES)
        rev = self._store.revision  # first: see KV.get
        kv = self._store.get(t.node_key(name))
        if kv is None:
            return Answer(None, 0, rev, prefixes, found=False)
        services: dict[str, Any] = {}
        index = kv.mod_revision
        found, _ = self._range(t.SERVICES)
        for skv, d in found:
            if d["Node"] == name:
                services[d["ID"]] = _service_json(skv, d)
                index = max(index, skv.mod_revision)
        data = {"Node": _node_json(kv, self._decode(kv), self._dc), "Services": services}
        return Answer(data, index, rev, prefixes)

    # -- health ----------------------------------------------------------------

    def health_service(self, name: str, tags: Sequence[str] = (), passing: bool = False) -> Answer:
        if not self._keep_answers:
            return self._health_service(name, tags, passing)
        key = (name, tuple(tags), passing)
        revision = self._store.revision
        hit = self._answers.get(key)
        if hit is not None and hit.revision == revision:
            return hit
        answer = self._health_service(name, tags, passing)
        # Kept only if nothing was written while it was read (its ranges
        # may otherwise span two revisions).
        if answer.revision == revision == self._store.revision:
            if self._answers_at != revision or len(self._answers) >= _ANSWERS_LIMIT:
                self._answers = {}
                self._answers_at = revision
            self._answers[key] = answer
        return answer

    def _health_service(self, name: str, tags: Sequence[str], passing: bool) -> Answer:
        found, rev = self._range(t.service_prefix(name))
        checks = self._store.range(t.check_prefix(name)).kvs
        by_instance: dict[tuple[str, str], list[KeyValue]] = {}
        index = max(_max_rev(found), max((kv.mod_revision for kv in checks), default=0))
        decode = self._decode
        for kv in checks:
            d = decode(kv)
            inst = (d["Node"], d["ServiceID"])
            have = by_instance.get(inst)
            if have is None:
                by_instance[inst] = [kv]
            else:
                have.append(kv)
        nodes: dict[str, Any] = {}
        per_node: dict[str, tuple[tuple[int, ...], list[Any]]] = {}
        out: list[Any] = []
        raw: list[bytes] = [b"["]
        rendered = self._rendered
        for kv, d in found:
            if tags and not _has_tags(d, tags):
                continue
            node_name = d["Node"]
            node = self._node(node_name, nodes)
            if node is None:
                continue
            if node_name not in per_node:
                nchecks, _ = self._range(f"{t.NODE_CHECKS}{t.seg(node_name)}/")
                index = max(index, node[0].mod_revision, _max_rev(nchecks))
                stamp = (node[0].mod_revision, *(c.mod_revision for c, _ in nchecks))
                per_node[node_name] = (stamp, self._node_check_json(node_name, nchecks))
            node_stamp, node_checks = per_node[node_name]
            own = by_instance.get((node_name, d["ID"]), [])
            # A rendered entry is valid while the instance, its node, the
            # node's checks and its own checks keep their mod revisions.
            own_stamp = (own[0].mod_revision,) if len(own) == 1 else _revisions(own)
            cached = rendered.get(kv.key)
            if (
                cached is None
                or cached[0] != kv.mod_revision
                or cached[2] != own_stamp
                or cached[1] != node_stamp
            ):
                entry = {
                    "Node": _node_json(node[0], node[1], self._dc),
                    "Service": _service_json(kv, d),
                    "Checks": [*node_checks, *(_with_index(c, decode(c)) for c in own)],
                }
                ok = all(c["Status"] == t.Status.PASSING for c in entry["Checks"])
                cached = (kv.mod_revision, node_stamp, own_stamp, entry, dumps(entry), ok)
                if len(rendered) >= _CACHE_LIMIT:
                    rendered.clear()
                rendered[kv.key] = cached
            if passing and not cached[5]:
                continue
            out.append(cached[3])
            raw += (cached[4], b",")
        # Only the nodes this answer shows matter: a new instance on another
        # node arrives through the service's own prefix.
        prefixes = [t.service_prefix(name), t.check_prefix(name)]
        for node_name in nodes:
            prefixes += [t.node_key(node_name), f"{t.NODE_CHECKS}{t.seg(node_name)}/"]
        raw[-1] = b"]"  # the last comma, or after the "[" of an empty list
        if len(raw) == 1:
            raw.insert(0, b"[")
        return Answer(out, index, rev, tuple(prefixes), raw=b"".join(raw))

    def health_checks(self, service: str) -> Answer:
        found, rev = self._range(t.check_prefix(service))
        out = [_with_index(kv, d) for kv, d in found]
        return Answer(out, _max_rev(found), rev, (t.check_prefix(service),))

    def health_node(self, node: str) -> Answer:
        nchecks, rev = self._range(f"{t.NODE_CHECKS}{t.seg(node)}/")
        svc_checks, _ = self._range(t.CHECKS)
        mine = [(kv, d) for kv, d in svc_checks if d["Node"] == node]
        out = [_with_index(kv, d) for kv, d in (*nchecks, *mine)]
        index = max(_max_rev(nchecks), _max_rev(mine))
        return Answer(out, index, rev, (f"{t.NODE_CHECKS}{t.seg(node)}/", t.CHECKS))

    def health_state(self, state: str) -> Answer:
        nchecks, rev = self._range(t.NODE_CHECKS)
        svc_checks, _ = self._range(t.CHECKS)
        every = [*nchecks, *svc_checks]
        keep: Callable[[dict[str, Any]], bool] = (
            (lambda d: True) if state == "any" else (lambda d: d["Status"] == state)
        )
        out = [_with_index(kv, d) for kv, d in every if keep(d)]
        return Answer(out, _max_rev(every), rev, (t.NODE_CHECKS, t.CHECKS))

    # -- this agent's view ---------------------------------------------------

    def agent_services(self, node: str) -> dict[str, Any]:
        found, _ = self._range(f"{t.AGENT}{t.seg(node)}/svc/")
        out: dict[str, Any] = {}
        for kv, d in found:
            sid = _last_segment(kv.key)
            skv = self._store.get(t.service_key(d["Name"], node, sid))
            if skv is not None:
                out[sid] = _agent_service_json(skv, self._decode(skv), self._dc)
        return out

    def agent_service(self, node: str, service_id: str) -> Answer:
        rev = self._store.revision  # first: see KV.get
        akv = self._store.get(t.agent_service_key(node, service_id))
        if akv is None:
            return Answer(None, 0, rev, (t.agent_service_key(node, service_id),), found=False)
        name = self._decode(akv)["Name"]
        key = t.service_key(name, node, service_id)
        skv = self._store.get(key)
        if skv is None:
            return Answer(None, 0, rev, (key,), found=False)
        data = _agent_service_json(skv, self._decode(skv), self._dc, content_hash=True)
        return Answer(data, skv.mod_revision, rev, (key,))

    def agent_checks(self, node: str) -> dict[str, Any]:
        nchecks, _ = self._range(f"{t.NODE_CHECKS}{t.seg(node)}/")
        defs, _ = self._range(f"{t.AGENT}{t.seg(node)}/chk/")
        out = {d["CheckID"]: d for _, d in nchecks if d["CheckID"] != t.SERF_CHECK}
        for _, d in defs:
            kv = self._store.get(t.check_key(d["ServiceName"], node, d["CheckID"]))
            if kv is not None:
                out[d["CheckID"]] = self._decode(kv)
        return out

    def members(self) -> list[dict[str, Any]]:
        found, _ = self._range(t.NODES)
        serf, _ = self._range(t.NODE_CHECKS)
        alive = {d["Node"] for _, d in serf if d["CheckID"] == t.SERF_CHECK}
        return [member_json(d, self._dc, d["Node"] in alive) for _, d in found]

    def member(self, node: str) -> dict[str, Any] | None:
        """One node's entry of ``members`` (None when it is not registered)."""
        kv = self._store.get(t.node_key(node))
        if kv is None:
            return None
        alive = self._store.get(t.check_key("", node, t.SERF_CHECK)) is not None
        return member_json(self._decode(kv), self._dc, alive)


def member_json(node: dict[str, Any], dc: str, alive: bool) -> dict[str, Any]:
    """A node as a Serf member (/v1/agent/members, and /v1/agent/self's
    Member): the tags a Consul server carries."""
    return {
        "Name": node["Node"],
        "Addr": node["Address"],
        "Port": 8301,
        "Tags": {
            "dc": dc,
            "role": "consul",
            "build": t.CONSUL_VERSION,
            "id": node.get("ID", ""),
            "port": "8300",
            "raft_vsn": "3",
            "vsn": "2",
            "vsn_min": "2",
            "vsn_max": "3",
        },
        "Status": 1 if alive else 4,  # serf: alive / failed
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    }


def _revisions(kvs: Sequence[KeyValue]) -> tuple[int, ...]:
    return tuple([kv.mod_revision for kv in kvs])


def _max_rev(found: Sequence[tuple[KeyValue, Any]]) -> int:
    return max((kv.mod_revision for kv, _ in found), default=0)


def _has_tags(d: dict[str, Any], tags: Sequence[str]) -> bool:
    have = d.get("Tags") or ()
    return all(tag in have for tag in tags)


def _with_index(kv: KeyValue, d: dict[str, Any]) -> dict[str, Any]:
    return {**d, "CreateIndex": kv.create_revision, "ModifyIndex": kv.mod_revision}


def _service_node_json(
    kv: KeyValue, d: dict[str, Any], n: dict[str, Any], dc: str
) -> dict[str, Any]:
    """An instance on its node as /v1/catalog/service/:name lists it."""
    return {
        "ID": n.get("ID", ""),
        "Node": n["Node"],
        "Address": n["Address"],
        "Datacenter": dc,
        "TaggedAddresses": n.get("TaggedAddresses") or {},
        "NodeMeta": n.get("Meta") or {},
        "ServiceKind": d.get("Kind", ""),
        "ServiceID": d["ID"],
        "ServiceName": d["Service"],
        "ServiceTags": d.get("Tags", []),
        "ServiceAddress": d.get("Address", ""),
        "ServiceTaggedAddresses": d.get("TaggedAddresses") or {},
        "ServiceWeights": d.get("Weights"),
        "ServiceMeta": d.get("Meta") or {},
        "ServicePort": d.get("Port", 0),
        "ServiceEnableTagOverride": d.get("EnableTagOverride", False),
        "CreateIndex": kv.create_revision,
        "ModifyIndex": kv.mod_revision,
    }


def _node_json(kv: KeyValue, d: dict[str, Any], dc: str) -> dict[str, Any]:
    return {
        "ID": d.get("ID", ""),
        "Node": d["Node"],
        "Address": d["Address"],
        "Datacenter": dc,
        "TaggedAddresses": d.get("TaggedAddresses") or {},
        "Meta": d.get("Meta") or {},
        "CreateIndex": kv.create_revision,
        "ModifyIndex": kv.mod_revision,
    }


def _agent_service_json(
    kv: KeyValue, d: dict[str, Any], dc: str, *, content_hash: bool = False
) -> dict[str, Any]:
    """An agent's service as Consul's api.AgentService sends it: the
    ``omitempty`` fields (Kind, TaggedAddresses, ContentHash) only when
    set, the datacenter, no catalog indexes. ContentHash only for the one
    service (/v1/agent/service/:id), as Consul (agent/agent_endpoint.go)."""
    out: dict[str, Any] = {}
    if d.get("Kind"):
        out["Kind"] = d["Kind"]
    out.update(
        ID=d["ID"],
        Service=d["Service"],
        Tags=d.get("Tags") or [],
        Meta=d.get("Meta") or {},
        Port=d.get("Port", 0),
        Address=d.get("Address", ""),
    )
    if d.get("TaggedAddresses"):
        out["TaggedAddresses"] = d["TaggedAddresses"]
    out.update(
        Weights=d.get("Weights") or {"Passing": 1, "Warning": 1},
        EnableTagOverride=d.get("EnableTagOverride", False),
    )
    if content_hash:
        out["ContentHash"] = f"{kv.mod_revision:016x}"
    out["Datacenter"] = dc
    return out


def _service_json(kv: KeyValue, d: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in d.items() if k != "Node"}
    out["CreateIndex"] = kv.create_revision
    out["ModifyIndex"] = kv.mod_revision
    return out


def _last_segment(key: str) -> str:
    return unquote(key.rsplit("/", 1)[1])
