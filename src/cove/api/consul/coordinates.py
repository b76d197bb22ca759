"""/v1/coordinate/...: nodes' network coordinates (Vivaldi's model, see
``cove.registry.coordinates``), and ``?near=`` for the catalog and health
routes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from cove.acl import Access
from cove.api import http as web
from cove.api.consul.common import (
    acl_filter,
    answer_reply,
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
from cove.errors import InvalidArgument
from cove.registry.coordinates import sort_near
from cove.registry.decode import fold, text
from cove.registry.queries import Answer


async def near(request: web.Request, answer: Answer, node_of: Callable[[Any], str]) -> Answer:
    """``answer`` sorted by ?near= (a node, or ``_agent`` for this one)."""
    origin = request.query.get("near", "")
    if not origin or not isinstance(answer.data, list) or not answer.found:
        return answer
    reg = ctx(request).registry
    if origin == "_agent":
        origin = reg.node_name
    coords = await run(request, reg.coordinates.of)
    return replace(answer, data=sort_near(answer.data, origin, coords, node_of), raw=None)


@consul_errors
async def update(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    body = await json_body(request)
    node = text(fold(body, "coordinate update"), "node", "Node")
    if not node:
        raise InvalidArgument("Node is required")
    authz.need("node", node, Access.WRITE)
    await write(request, ctx(request).registry.coordinates.update, body)
    return reply(True)


@consul_errors
async def nodes(request: web.Request) -> web.Response:
    opts = options(request)
    authz = await authorize(request, opts)
    coords = ctx(request).registry.coordinates
    answer = await blocking(request, opts, coords.nodes)
    if authz.enabled:
        answer, removed = acl_filter(
            answer, lambda e: authz.allowed("node", e["Node"], Access.READ)
        )
        return answer_reply(answer, opts, acl_filtered=removed)
    return answer_reply(answer, opts)


@consul_errors
async def node(request: web.Request) -> web.Response:
    opts = options(request)
    authz = await authorize(request, opts)
    name = request.match_info["node"]
    authz.need("node", name, Access.READ)
    coords = ctx(request).registry.coordinates
    answer = await blocking(request, opts, lambda: coords.node(name))
    return answer_reply(answer, opts)


@consul_errors
async def datacenters(request: web.Request) -> web.Response:
    """The WAN coordinates of each datacenter's servers: cove knows its own
    datacenter, whose servers are its agents (those with a coordinate)."""
    options(request)
    reg = ctx(request).registry
    answer: Answer = await run(request, reg.coordinates.nodes)
    entries = [
        {"Node": f"{e['Node']}.{reg.datacenter}", "Coord": e["Coord"]}
        for e in answer.data
        if not e.get("Segment")
    ]
    return reply([{"Datacenter": reg.datacenter, "AreaID": "wan", "Coordinates": entries}])


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_put("/v1/coordinate/update", update)
    r.add_get("/v1/coordinate/nodes", nodes)
    r.add_get("/v1/coordinate/node/{node}", node)
    r.add_get("/v1/coordinate/datacenters", datacenters)
