"""/v1/catalog/... and /v1/health/...: every indexed GET here blocks."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cove.acl import Access, Authorizer
from cove.api import http as web
from cove.api.consul.common import (
    FILTERED,
    QueryOptions,
    acl_filter,
    answer_reply,
    authorize,
    blocking,
    consul_errors,
    ctx,
    flag,
    json_body,
    options,
    reply,
    run,
    write,
)
from cove.api.consul.coordinates import near
from cove.errors import CoveError, InvalidArgument
from cove.registry import filter_schema as fs
from cove.registry import types as t
from cove.registry.decode import fold
from cove.registry.queries import Answer


def check_allowed(authz: Authorizer, check: Any, need: Access = Access.READ) -> bool:
    """A service's check follows the service, a node's check the node."""
    service = check.get("ServiceName") or ""
    if service:
        return authz.allowed("service", service, need)
    return authz.allowed("node", str(check.get("Node", "")), need)


def _filtered(answer: Answer, opts: QueryOptions, authz: Authorizer, keep: Any) -> web.Response:
    if not authz.enabled or authz.reads_all("service", "node"):
        return answer_reply(answer, opts)
    answer, removed = acl_filter(answer, keep)
    return answer_reply(answer, opts, acl_filtered=removed)


def _need_registration(authz: Authorizer, body: Any) -> None:
    d = fold(body, "registration")
    authz.need("node", str(d.get("node") or ""), Access.WRITE)
    svc = d.get("service")
    if isinstance(svc, dict):
        s = fold(svc, "service")
        authz.need("service", str(s.get("service") or s.get("name") or ""), Access.WRITE)


def _body_datacenter(request: web.Request, body: Any) -> None:
    """A ``Datacenter`` in a catalog write's body names where it goes (the
    URL's ?dc wins, as Consul's parseDC): another one cannot be reached."""
    if request.query.get("dc") or not isinstance(body, dict):
        return
    dc = fold(body, "registration").get("datacenter")
    if dc and dc != ctx(request).registry.datacenter:
        raise CoveError("No path to datacenter")


def no_peer(request: web.Request) -> None:
    """``?peer=`` asks for a cluster peer's imported services; cove has no
    peering, so every named peer is unknown (an empty one is local)."""
    peer = request.query.get("peer", "")
    if peer:
        raise InvalidArgument(
            f'No cluster peer named "{peer}": cove has no cluster peering;'
            " leave out ?peer to query this cluster"
        )


@consul_errors
async def register(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    c = ctx(request)
    body = await json_body(request)
    _body_datacenter(request, body)
    if authz.enabled:
        _need_registration(authz, body)
    await write(request, c.registry.catalog.catalog_register, body)
    if c.runner is not None:
        c.runner.kick()
    return reply(True)


@consul_errors
async def deregister(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    c = ctx(request)
    body = await json_body(request)
    _body_datacenter(request, body)
    if authz.enabled:
        await _need_deregistration(request, authz, fold(body, "deregistration"))
    await write(request, c.registry.catalog.catalog_deregister, body)
    return reply(True)


async def _need_deregistration(request: web.Request, authz: Authorizer, d: dict[str, Any]) -> None:
    """As Consul: a service needs write on that service, a check on its
    service (or its node), the whole node write on the node."""
    node = str(d.get("node") or "")
    service_id = str(d.get("serviceid") or "")
    check_id = str(d.get("checkid") or "")
    if not service_id and not check_id:
        authz.need("node", node, Access.WRITE)
        return
    q = ctx(request).registry.queries
    if service_id:
        answer = await run(request, q.node, node)
        services = answer.data["Services"] if answer.found else {}
        name = services.get(service_id, {}).get("Service")
        if name is None:  # no name to judge by: as for the node's own entries
            authz.need("node", node, Access.WRITE)
        else:
            authz.need("service", name, Access.WRITE)
        return
    answer = await run(request, q.health_node, node)
    for check in answer.data:
        if check.get("CheckID") == check_id and not check_allowed(authz, check, Access.WRITE):
            service = check.get("ServiceName")
            raise (
                authz.denied("service:write", service)
                if service
                else authz.denied("node:write", node)
            )


@consul_errors
async def datacenters(request: web.Request) -> web.Response:
    return reply([ctx(request).registry.datacenter])


@consul_errors
async def services(request: web.Request) -> web.Response:
    no_peer(request)
    opts = options(request, fs.CATALOG_SERVICES)
    q = ctx(request).registry.queries
    authz = await authorize(request, opts)
    # The filter picks instances (as ServiceNodes) before they are
    # grouped by name, so the answer itself is not filtered again.
    pred = opts.predicate
    answer = await blocking(request, opts, lambda: q.services(pred), (t.SERVICES,))
    plain = replace(opts, filter=None, predicate=None)
    return _filtered(answer, plain, authz, lambda name: authz.allowed("service", name, Access.READ))


@consul_errors
async def service(request: web.Request) -> web.Response:
    no_peer(request)
    opts = options(request, fs.SERVICE_NODE)
    q = ctx(request).registry.queries
    name = request.match_info["name"]
    tags = request.query.getall("tag", [])
    authz = await authorize(request, opts)
    answer = await blocking(
        request, opts, lambda: q.service_nodes(name, tags), (t.service_prefix(name),)
    )
    answer = await near(request, answer, lambda e: str(e["Node"]))
    return _filtered(answer, opts, authz, lambda e: _entry_allowed(authz, e))


@consul_errors
async def nodes(request: web.Request) -> web.Response:
    no_peer(request)
    opts = options(request, fs.NODE)
    q = ctx(request).registry.queries
    authz = await authorize(request, opts)
    answer = await blocking(request, opts, q.nodes, (t.NODES,))
    answer = await near(request, answer, lambda n: str(n["Node"]))
    return _filtered(answer, opts, authz, lambda n: authz.allowed("node", n["Node"], Access.READ))


@consul_errors
async def node(request: web.Request) -> web.Response:
    no_peer(request)
    opts = options(request)
    q = ctx(request).registry.queries
    name = request.match_info["node"]
    authz = await authorize(request, opts)
    answer = await blocking(request, opts, lambda: q.node(name), (t.node_key(name),))
    if not answer.found or not authz.allowed("node", name, Access.READ):
        # Consul answers an unknown node with 200 and null.
        return reply(None, answer.index)
    if authz.enabled:
        services = answer.data["Services"]
        kept = {
            k: v for k, v in services.items() if authz.allowed("service", v["Service"], Access.READ)
        }
        if len(kept) != len(services):
            response = reply({**answer.data, "Services": kept}, answer.index)
            response.headers[FILTERED] = "true"
            return response
    return reply(answer.data, answer.index)


@consul_errors
async def health_service(request: web.Request) -> web.Response:
    no_peer(request)
    opts = options(request, fs.CHECK_SERVICE_NODE)
    q = ctx(request).registry.queries
    name = request.match_info["name"]
    tags = request.query.getall("tag", [])
    passing = flag(request, "passing")
    authz = await authorize(request, opts)
    answer = await blocking(
        request,
        opts,
        lambda: q.health_service(name, tags, passing),
        (t.service_prefix(name), t.check_prefix(name)),
    )
    answer = await near(request, answer, lambda e: str(e["Node"]["Node"]))
    return _filtered(answer, opts, authz, lambda e: _health_allowed(authz, e))


@consul_errors
async def health_checks(request: web.Request) -> web.Response:
    no_peer(request)
    opts = options(request, fs.HEALTH_CHECK)
    q = ctx(request).registry.queries
    name = request.match_info["name"]
    authz = await authorize(request, opts)
    answer = await blocking(request, opts, lambda: q.health_checks(name), (t.check_prefix(name),))
    return _filtered(answer, opts, authz, lambda c: _check_node_allowed(authz, c))


@consul_errors
async def health_node(request: web.Request) -> web.Response:
    no_peer(request)
    opts = options(request, fs.HEALTH_CHECK)
    q = ctx(request).registry.queries
    name = request.match_info["node"]
    authz = await authorize(request, opts)
    answer = await blocking(request, opts, lambda: q.health_node(name))
    return _filtered(answer, opts, authz, lambda c: _check_node_allowed(authz, c))


_STATES = {"any", "passing", "warning", "critical", "maintenance"}


@consul_errors
async def health_state(request: web.Request) -> web.Response:
    no_peer(request)
    opts = options(request, fs.HEALTH_CHECK)
    q = ctx(request).registry.queries
    state = request.match_info["state"]
    if state not in _STATES:
        raise InvalidArgument(f"Bad check state: {state}")
    authz = await authorize(request, opts)
    answer = await blocking(request, opts, lambda: q.health_state(state))
    return _filtered(answer, opts, authz, lambda c: _check_node_allowed(authz, c))


def _entry_allowed(authz: Authorizer, e: Any) -> bool:
    return authz.allowed("service", e["ServiceName"], Access.READ) and authz.allowed(
        "node", e["Node"], Access.READ
    )


def _health_allowed(authz: Authorizer, e: Any) -> bool:
    return authz.allowed("service", e["Service"]["Service"], Access.READ) and authz.allowed(
        "node", e["Node"]["Node"], Access.READ
    )


def _check_node_allowed(authz: Authorizer, c: Any) -> bool:
    return check_allowed(authz, c) and authz.allowed("node", str(c.get("Node", "")), Access.READ)


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
