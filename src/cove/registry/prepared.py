"""Prepared queries (Consul's /v1/query): stored service lookups, with
templates, executed against the catalog's health.

What a query does, as Consul's (agent/consul/prepared_query_endpoint.go and
agent/consul/prepared_query/template.go):

- find the query: by ID, else by exact name, else the template whose name
  is the longest prefix of the name asked (``name_prefix_match``), rendered
  with ``${name.full}``, ``${name.prefix}``, ``${name.suffix}`` and
  ``${match(N)}`` (its Regexp's groups);
- take the service's instances, drop those with a critical check (and with
  OnlyPassing those with a warning too), ignoring IgnoreCheckIDs; keep
  those with every Tag (``!tag``: without it; case-insensitive) and the
  NodeMeta / ServiceMeta asked;
- shuffle, then sort by round trip from ``?near`` (else the query's Near)
  when coordinates allow; cut to ``?limit``.

Failover to other datacenters: cove knows only its own, so a query's
Failover is kept and shown but never reaches another datacenter
(``Failovers`` stays 0).

Validation errors are 500s with Consul's messages, as Consul answers them
(its RPC errors carry no status of their own).
"""

from __future__ import annotations

import builtins
import random
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from cove.codec import dumps
from cove.errors import CoveError, InvalidArgument, NotFound
from cove.registry import types as t
from cove.registry.coordinates import sort_near
from cove.registry.decode import fold, integer, string_map, strings, text
from cove.registry.durations import parse_duration
from cove.registry.keys import QUERIES, seg
from cove.registry.queries import Answer, Decoded
from cove.registry.txn import Tx, transact
from cove.store.base import Delete, Put, Store

TEMPLATE = "name_prefix_match"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_VAR = re.compile(r"\$\{([^}]*)\}")


class QueryError(CoveError):
    """Consul answers a bad prepared query with 500 and its message."""

    http_status = 500


def parse(body: Any, *, sessions_exist: Callable[[str], bool]) -> dict[str, Any]:
    """A query definition from a request body, checked as Consul's
    parseQuery; stored in Consul's shape (without ID and indexes)."""
    d = fold(body, "prepared query")
    svc = fold(d.get("service") or {}, "Service")
    service = text(svc, "service", "Service")
    if not service:
        raise QueryError("Must provide a Service name to query")
    failover = fold(svc.get("failover") or {}, "Failover")
    nearest = integer(failover, "nearestn", "NearestN")
    if nearest < 0:
        raise QueryError("Bad NearestN, must be >= 0")
    dns = fold(d.get("dns") or {}, "DNS")
    ttl = text(dns, "ttl", "TTL")
    if ttl:
        try:
            if parse_duration(ttl, "TTL") < 0:
                raise QueryError(f"Bad DNS TTL '{ttl}', must be >=0")
        except InvalidArgument as exc:
            raise QueryError(f"Bad DNS TTL '{ttl}': {exc.message}") from exc
    tpl = fold(d.get("template") or {}, "Template")
    kind = text(tpl, "type", "Type")
    regexp = text(tpl, "regexp", "Regexp")
    if kind not in ("", TEMPLATE):
        raise QueryError(f"Bad Template.Type '{kind}'")
    if regexp:
        try:
            re.compile(regexp)
        except re.error as exc:
            raise QueryError(f"Bad Regexp: {exc}") from exc
    name = text(d, "name", "Name")
    if _UUID.match(name):
        raise QueryError(f'Query name "{name}" must not look like a query ID')
    session = text(d, "session", "Session")
    if session and not sessions_exist(session):
        raise QueryError(f'invalid session "{session}"')
    return {
        "Name": name,
        "Session": session,
        "Token": text(d, "token", "Token"),
        "Template": {
            "Type": kind,
            "Regexp": regexp,
            "RemoveEmptyTags": bool(tpl.get("removeemptytags")),
        },
        "Service": {
            "Service": service,
            "Failover": {
                "NearestN": nearest,
                "Datacenters": list(strings(failover, "datacenters", "Failover.Datacenters")),
            },
            "IgnoreCheckIDs": list(strings(svc, "ignorecheckids", "IgnoreCheckIDs")),
            "OnlyPassing": bool(svc.get("onlypassing")),
            "Near": text(svc, "near", "Near"),
            "Tags": list(strings(svc, "tags", "Tags")),
            "NodeMeta": string_map(svc, "nodemeta", "NodeMeta"),
            "ServiceMeta": string_map(svc, "servicemeta", "ServiceMeta"),
        },
        "DNS": {"TTL": ttl},
    }


def render(query: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A template query rendered for the name it was asked by."""
    if query["Template"]["Type"] != TEMPLATE:
        return dict(query)
    prefix = str(query["Name"])
    groups: list[str] = []
    if query["Template"]["Regexp"]:
        m = re.search(query["Template"]["Regexp"], name)
        groups = [m.group(0), *(g or "" for g in m.groups())] if m else []
    values = {"name.full": name, "name.prefix": prefix, "name.suffix": name[len(prefix) :]}

    def sub(text_: str) -> str:
        def one(m: re.Match[str]) -> str:
            var = m.group(1).strip()
            if var in values:
                return values[var]
            hit = re.fullmatch(r"match\((\d+)\)", var)
            if hit:
                i = int(hit.group(1))
                return groups[i] if i < len(groups) else ""
            raise QueryError(f"Failed to render template: unknown variable {var!r}")

        return _VAR.sub(one, text_)

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return sub(v)
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        return v

    out = dict(query)
    out["Service"] = walk(query["Service"])
    if query["Template"]["RemoveEmptyTags"]:
        out["Service"]["Tags"] = [tag for tag in out["Service"]["Tags"] if tag]
    return out


def select(entries: list[dict[str, Any]], service: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The health entries a query keeps (see the module's description)."""
    ignore = set(service.get("IgnoreCheckIDs") or ())
    bad = {t.Status.CRITICAL.value}
    if service.get("OnlyPassing"):
        bad.add(t.Status.WARNING.value)
    want = [tag.lower() for tag in service.get("Tags") or () if tag and not tag.startswith("!")]
    unwanted = [tag[1:].lower() for tag in service.get("Tags") or () if tag.startswith("!")]
    node_meta = service.get("NodeMeta") or {}
    service_meta = service.get("ServiceMeta") or {}
    out = []
    for e in entries:
        if any(c["Status"] in bad for c in e["Checks"] if c["CheckID"] not in ignore):
            continue
        tags = {str(tag).lower() for tag in e["Service"].get("Tags") or ()}
        if any(tag not in tags for tag in want) or any(tag in tags for tag in unwanted):
            continue
        meta = e["Node"].get("Meta") or {}
        if any(meta.get(k) != v for k, v in node_meta.items()):
            continue
        smeta = e["Service"].get("Meta") or {}
        if any(smeta.get(k) != v for k, v in service_meta.items()):
            continue
        out.append(e)
    return out


class PreparedQueries:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._decode = Decoded(10_000)

    def _key(self, qid: str) -> str:
        return f"{QUERIES}{seg(qid)}"

    def _check_name(self, tx: Tx, qid: str, query: Mapping[str, Any]) -> None:
        name = query["Name"]
        if not name and query["Template"]["Type"] != TEMPLATE:
            return
        for kv in tx.range(QUERIES):
            other = self._decode(kv)
            if other["ID"] != qid and other["Name"] == name:
                if query["Template"]["Type"] == TEMPLATE:
                    raise QueryError(f'a query template named "{name}" already exists')
                raise QueryError(f'name "{name}" aliases an existing query name')

    def create(self, query: Mapping[str, Any]) -> str:
        qid = str(uuid.uuid4())

        def plan(tx: Tx) -> None:
            self._check_name(tx, qid, query)
            tx.add(Put(self._key(qid), dumps({"ID": qid, **query})))

        transact(self._store, plan)
        return qid

    def update(self, qid: str, query: Mapping[str, Any]) -> None:
        def plan(tx: Tx) -> None:
            if tx.get(self._key(qid)) is None:
                raise QueryError(f"Cannot modify non-existent prepared query: '{qid}'")
            self._check_name(tx, qid, query)
            tx.add(Put(self._key(qid), dumps({"ID": qid, **query})))

        transact(self._store, plan)

    def delete(self, qid: str) -> None:
        def plan(tx: Tx) -> None:
            if tx.get(self._key(qid)) is None:
                raise QueryError(f"Cannot delete non-existent prepared query: '{qid}'")
            tx.add(Delete(self._key(qid)))

        transact(self._store, plan)

    def _json(self, kv: Any) -> dict[str, Any]:
        return {
            **self._decode(kv),
            "CreateIndex": kv.create_revision,
            "ModifyIndex": kv.mod_revision,
        }

    def list(self) -> Answer:
        rr = self._store.range(QUERIES)
        out = [self._json(kv) for kv in rr.kvs]
        return Answer(
            out, max((kv.mod_revision for kv in rr.kvs), default=0), rr.revision, (QUERIES,)
        )

    def get(self, qid: str) -> Answer:
        rev = self._store.revision
        kv = self._store.get(self._key(qid)) if _UUID.match(qid) else None
        if kv is None:
            return Answer(None, 0, rev, (QUERIES,), found=False)
        return Answer([self._json(kv)], kv.mod_revision, rev, (QUERIES,))

    def resolve(self, id_or_name: str) -> dict[str, Any]:
        """The query ``id_or_name`` names, rendered when it is a template;
        ``NotFound`` when none does."""
        if _UUID.match(id_or_name):
            kv = self._store.get(self._key(id_or_name))
            if kv is not None:
                return render(self._json(kv), id_or_name)
        best: dict[str, Any] | None = None
        for kv in self._store.range(QUERIES).kvs:
            q = self._decode(kv)
            if q["Template"]["Type"] != TEMPLATE and q["Name"] and q["Name"] == id_or_name:
                return self._json(kv)
            if (
                q["Template"]["Type"] == TEMPLATE
                and id_or_name.startswith(q["Name"])
                and (best is None or len(q["Name"]) > len(best["Name"]))
            ):
                best = self._json(kv)
        if best is None:
            raise NotFound("Query not found")
        return render(best, id_or_name)

    def execute(
        self,
        query: Mapping[str, Any],
        health: Callable[[str], Any],
        *,
        near: str,
        coords: Callable[[], Mapping[str, Any]],
        limit: int,
        datacenter: str,
        rng: random.Random,
    ) -> dict[str, Any]:
        service = query["Service"]
        nodes = select(builtins.list(health(service["Service"])), service)
        rng.shuffle(nodes)
        origin = near or service.get("Near", "")
        if origin:
            nodes = sort_near(nodes, origin, coords(), lambda e: str(e["Node"]["Node"]))
        if limit > 0:
            nodes = nodes[:limit]
        return {
            "Service": service["Service"],
            "Nodes": nodes,
            "DNS": query["DNS"],
            "Datacenter": datacenter,
            "Failovers": 0,
        }
