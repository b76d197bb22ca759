"""/v1/query: prepared queries (``cove.registry.prepared``). ACLs as
Consul's: a named query needs query:write on its name to change and
query:read to be read; executing one answers only the instances the caller
may read (service and node read). An unnamed query needs query:write on ""
(cove asks for it where Consul lets anyone with the ID change one). A stored
Token shows as ``<hidden>`` to all but management tokens."""

from __future__ import annotations

import random
from typing import Any

from cove.acl import Access, Authorizer
from cove.api import http as web
from cove.api.consul.common import (
    FILTERED,
    authorize,
    blocking,
    consul_errors,
    ctx,
    json_body,
    options,
    reply,
    run,
    write,
)
from cove.errors import InvalidArgument, NotFound
from cove.registry import prepared
from cove.registry import types as t


def _redact(authz: Authorizer, q: dict[str, Any]) -> dict[str, Any]:
    if q.get("Token") and authz.enabled and not authz.management:
        return {**q, "Token": "<hidden>"}
    return q


def _parse(request: web.Request, body: Any) -> dict[str, Any]:
    reg = ctx(request).registry
    return prepared.parse(
        body, sessions_exist=lambda sid: reg.store.get(t.session_key(sid)) is not None
    )


@consul_errors
async def create(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    query = _parse(request, await json_body(request))
    authz.need("query", query["Name"], Access.WRITE)
    qid = await write(request, ctx(request).registry.prepared.create, query)
    return reply({"ID": qid})


@consul_errors
async def list_queries(request: web.Request) -> web.Response:
    opts = options(request)
    authz = await authorize(request, opts)
    pq = ctx(request).registry.prepared
    answer = await blocking(request, opts, pq.list)
    data = answer.data
    kept = [_redact(authz, q) for q in data if authz.allowed("query", q["Name"], Access.READ)]
    response = reply(kept, answer.index)
    if len(kept) != len(data):
        response.headers[FILTERED] = "true"
    return response


async def _existing(request: web.Request, qid: str) -> dict[str, Any]:
    answer = await run(request, ctx(request).registry.prepared.get, qid)
    if not answer.found:
        raise NotFound("Query not found")
    query: dict[str, Any] = answer.data[0]
    return query


@consul_errors
async def get_one(request: web.Request) -> web.Response:
    opts = options(request)
    authz = await authorize(request, opts)
    qid = request.match_info["id"]
    pq = ctx(request).registry.prepared
    answer = await blocking(request, opts, lambda: pq.get(qid))
    if not answer.found:
        raise NotFound("Query not found")
    authz.need("query", answer.data[0]["Name"], Access.READ)
    return reply([_redact(authz, answer.data[0])], answer.index)


@consul_errors
async def update(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    qid = request.match_info["id"]
    old = await _existing(request, qid)
    authz.need("query", old["Name"], Access.WRITE)
    query = _parse(request, await json_body(request))
    authz.need("query", query["Name"], Access.WRITE)
    await write(request, ctx(request).registry.prepared.update, qid, query)
    return web.Response(status=200)


@consul_errors
async def delete(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    qid = request.match_info["id"]
    old = await _existing(request, qid)
    authz.need("query", old["Name"], Access.WRITE)
    await write(request, ctx(request).registry.prepared.delete, qid)
    return web.Response(status=200)


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "")
    if not raw:
        return 0
    if not raw.isdigit():
        raise InvalidArgument(f"Invalid limit: {raw!r}")
    return int(raw)


@consul_errors
async def execute(request: web.Request) -> web.Response:
    opts = options(request)
    authz = await authorize(request, opts)
    reg = ctx(request).registry
    limit = _limit(request)
    near = request.query.get("near", "")
    if near == "_agent":
        near = reg.node_name

    def go() -> dict[str, Any]:
        query = reg.prepared.resolve(request.match_info["id"])
        if query["Service"].get("Near") == "_agent":
            query["Service"] = {**query["Service"], "Near": reg.node_name}
        return reg.prepared.execute(
            query,
            lambda name: reg.queries.health_service(name).data,
            near=near,
            coords=reg.coordinates.of,
            limit=0,
            datacenter=reg.datacenter,
            rng=random.Random(),
        )

    result = await run(request, go)
    nodes = result["Nodes"]
    if authz.enabled:
        kept = [
            e
            for e in nodes
            if authz.allowed("service", e["Service"]["Service"], Access.READ)
            and authz.allowed("node", e["Node"]["Node"], Access.READ)
        ]
        if len(kept) != len(nodes):
            result = {**result, "Nodes": kept}
    if limit:
        result = {**result, "Nodes": result["Nodes"][:limit]}
    return reply(result)


@consul_errors
async def explain(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    reg = ctx(request).registry
    query = await run(request, reg.prepared.resolve, request.match_info["id"])
    authz.need("query", query["Name"], Access.READ)
    return reply({"Query": _redact(authz, query)})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/query", create)
    r.add_get("/v1/query", list_queries)
    r.add_get("/v1/query/{id}", get_one)
    r.add_put("/v1/query/{id}", update)
    r.add_delete("/v1/query/{id}", delete)
    r.add_get("/v1/query/{id}/execute", execute)
    r.add_get("/v1/query/{id}/explain", explain)
