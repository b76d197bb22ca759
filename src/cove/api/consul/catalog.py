"""/v1/catalog/... and /v1/health/...: every indexed GET here blocks."""

from __future__ import annotations

from cove.api import http as web
from cove.api.consul.common import (
    answer_reply,
    blocking,
    consul_errors,
    ctx,
    flag,
    json_body,
    options,
    reply,
    write,
)
from cove.errors import InvalidArgument
from cove.registry import filter_schema as fs
from cove.registry import types as t


@consul_errors
async def register(request: web.Request) -> web.Response:
    options(request)
    c = ctx(request)
    body = await json_body(request)
    await write(request, c.registry.catalog.catalog_register, body)
    if c.runner is not None:
        c.runner.kick()
    return reply(True)


@consul_errors
async def deregister(request: web.Request) -> web.Response:
    options(request)
    c = ctx(request)
    body = await json_body(request)
    await write(request, c.registry.catalog.catalog_deregister, body)
    return reply(True)


@consul_errors
async def datacenters(request: web.Request) -> web.Response:
    return reply([ctx(request).registry.datacenter])


@consul_errors
async def services(request: web.Request) -> web.Response:
    opts = options(request, fs.CATALOG_SERVICES)
    q = ctx(request).registry.queries
    answer = await blocking(request, opts, q.services, (t.SERVICES,))
    return answer_reply(answer, opts)


@consul_errors
async def service(request: web.Request) -> web.Response:
    opts = options(request, fs.SERVICE_NODE)
    q = ctx(request).registry.queries
    name = request.match_info["name"]
    tags = request.query.getall("tag", [])
    answer = await blocking(
        request, opts, lambda: q.service_nodes(name, tags), (t.service_prefix(name),)
    )
    return answer_reply(answer, opts)


@consul_errors
async def nodes(request: web.Request) -> web.Response:
    opts = options(request, fs.NODE)
    q = ctx(request).registry.queries
    answer = await blocking(request, opts, q.nodes, (t.NODES,))
    return answer_reply(answer, opts)


@consul_errors
async def node(request: web.Request) -> web.Response:
    opts = options(request)
    q = ctx(request).registry.queries
    name = request.match_info["node"]
    answer = await blocking(request, opts, lambda: q.node(name), (t.node_key(name),))
    if not answer.found:
        # Consul answers an unknown node with 200 and null.
        return reply(None, answer.index)
    return reply(answer.data, answer.index)


@consul_errors
async def health_service(request: web.Request) -> web.Response:
    opts = options(request, fs.CHECK_SERVICE_NODE)
    q = ctx(request).registry.queries
    name = request.match_info["name"]
    tags = request.query.getall("tag", [])
    passing = flag(request, "passing")
    answer = await blocking(
        request,
        opts,
        lambda: q.health_service(name, tags, passing),
        (t.service_prefix(name), t.check_prefix(name)),
    )
    return answer_reply(answer, opts)


@consul_errors
async def health_checks(request: web.Request) -> web.Response:
    opts = options(request, fs.HEALTH_CHECK)
    q = ctx(request).registry.queries
    name = request.match_info["name"]
    answer = await blocking(request, opts, lambda: q.health_checks(name), (t.check_prefix(name),))
    return answer_reply(answer, opts)


@consul_errors
async def health_node(request: web.Request) -> web.Response:
    opts = options(request, fs.HEALTH_CHECK)
    q = ctx(request).registry.queries
    name = request.match_info["node"]
    answer = await blocking(request, opts, lambda: q.health_node(name))
    return answer_reply(answer, opts)


_STATES = {"any", "passing", "warning", "critical", "maintenance"}


@consul_errors
async def health_state(request: web.Request) -> web.Response:
    opts = options(request, fs.HEALTH_CHECK)
    q = ctx(request).registry.queries
    state = request.match_info["state"]
    if state not in _STATES:
        raise InvalidArgument(f"Bad check state: {state}")
    answer = await blocking(request, opts, lambda: q.health_state(state))
    return answer_reply(answer, opts)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_put("/v1/catalog/register", register)
    r.add_put("/v1/catalog/deregister", deregister)
    r.add_get("/v1/catalog/datacenters", datacenters)
    r.add_get("/v1/catalog/services", services)
    r.add_get("/v1/catalog/service/{name}", service)
    r.add_get("/v1/catalog/nodes", nodes)
    r.add_get("/v1/catalog/node/{node}", node)
    r.add_get("/v1/health/service/{name}", health_service)
    r.add_get("/v1/health/checks/{name}", health_checks)
    r.add_get("/v1/health/node/{node}", health_node)
    r.add_get("/v1/health/state/{state}", health_state)
