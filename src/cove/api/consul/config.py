"""/v1/config: config entries (``cove.registry.config_entries``), with
Consul's ACL rules: service-defaults follow the service (service:read /
service:write on its name), proxy-defaults need mesh:write (operator:write
when mesh is unset) to change and nothing to read."""

from __future__ import annotations

from typing import Any

from cove.acl import Access, Authorizer
from cove.api import http as web
from cove.api.consul.common import (
    FILTERED,
    acl_filter,
    answer_reply,
    authorize,
    blocking,
    consul_errors,
    ctx,
    json_body,
    meta_headers,
    options,
    reply,
    write,
)
from cove.errors import InvalidArgument
from cove.registry import config_entries as ce


def _cas(request: web.Request) -> int | None:
    raw = request.query.get("cas")
    if raw is None:
        return None
    if not raw.isdigit():
        raise InvalidArgument(f"Invalid cas index: {raw!r}")
    return int(raw)


def _can(authz: Authorizer, kind: str, name: str, need: Access) -> bool:
    if kind == ce.PROXY_DEFAULTS:
        return need is Access.READ or authz.scalar("mesh", Access.WRITE)
    return authz.allowed("service", name, need)


def _need(authz: Authorizer, kind: str, name: str, need: Access) -> None:
    if _can(authz, kind, name, need):
        return
    if kind == ce.PROXY_DEFAULTS:
        raise authz.denied("mesh:write")
    raise authz.denied(f"service:{need.name.lower()}", name)


@consul_errors
async def put(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    entry = ce.parse(await json_body(request))
    _need(authz, entry["Kind"], entry["Name"], Access.WRITE)
    done = await write(request, ctx(request).registry.config.set, entry, _cas(request))
    return reply(done)


@consul_errors
async def get_one(request: web.Request) -> web.Response:
    opts = options(request)
    authz = await authorize(request, opts)
    kind, name = request.match_info["kind"], request.match_info["name"]
    ce.check_kind(kind)
    _need(authz, kind, name, Access.READ)
    config = ctx(request).registry.config
    answer = await blocking(request, opts, lambda: config.get(kind, name))
    if not answer.found:
        # Consul sets the query meta (X-Consul-Index) before its 404
        # (agent/config_endpoint.go, configGet).
        return web.Response(
            status=404,
            text=ce.not_found(kind, name).message,
            headers=meta_headers(answer.index),
        )
    return reply(answer.data, answer.index)


@consul_errors
async def list_kind(request: web.Request) -> web.Response:
    opts = options(request)
    authz = await authorize(request, opts)
    kind = request.match_info["kind"]
    ce.check_kind(kind)
    config = ctx(request).registry.config
    answer = await blocking(request, opts, lambda: config.list(kind))
    if authz.enabled:
        answer, removed = acl_filter(
            answer, lambda e: _can(authz, kind, str(e["Name"]), Access.READ)
        )
        response = answer_reply(answer, opts, not_found_empty=True)
        if removed:
            response.headers[FILTERED] = "true"
        return response
    return answer_reply(answer, opts, not_found_empty=True)


@consul_errors
async def delete(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    kind, name = request.match_info["kind"], request.match_info["name"]
    ce.check_kind(kind)
    _need(authz, kind, name, Access.WRITE)
    cas = _cas(request)
    done = await write(request, ctx(request).registry.config.delete, kind, name, cas)
    # Consul answers a plain delete with {} and a CAS delete with its outcome.
    body: Any = done if cas is not None else {}
    return reply(body)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_put("/v1/config", put)
    r.add_get("/v1/config/{kind}", list_kind)
    r.add_get("/v1/config/{kind}/{name}", get_one)
    r.add_delete("/v1/config/{kind}/{name}", delete)
