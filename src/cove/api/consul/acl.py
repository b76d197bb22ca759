"""/v1/acl/... and /v1/agent/token/...: Consul's ACL API.

Reading ACL objects needs ``acl:read``, changing them ``acl:write``;
``token/self`` needs only a valid token and bootstrap none. With ACLs off
every route here answers 401 "ACL support disabled", as Consul does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from cove.acl import AclService, Authorizer
from cove.acl.model import agent_token_kind, body_map, text
from cove.acl.rules import Access
from cove.api import http as web
from cove.api.consul.common import (
    authorize,
    consul_errors,
    ctx,
    json_body,
    options,
    reply,
    run,
)
from cove.errors import NotFound, Unauthorized


def _service(request: web.Request) -> AclService:
    acl = ctx(request).acl
    if acl is None:
        raise Unauthorized("ACL support disabled")
    return acl


async def _guard(request: web.Request, need: Access) -> tuple[AclService, Authorizer, str]:
    acl = _service(request)
    opts = options(request)
    authz = await authorize(request, opts)
    authz.need_scalar("acl", need)
    return acl, authz, opts.token


async def _call(request: web.Request, func: Callable[..., Any], *args: Any) -> web.Response:
    return reply(await run(request, func, *args))


async def _parsing(func: Callable[..., Any], *args: Any) -> web.Response:
    # Writing a policy parses its rules (pyhcl: tens of milliseconds for a
    # new text): off the event loop, whatever the store.
    return reply(await asyncio.to_thread(func, *args))


@consul_errors
async def bootstrap(request: web.Request) -> web.Response:
    acl = _service(request)
    options(request)
    body = body_map(await json_body(request), "Bootstrap")
    secret = text(body, "BootstrapSecret", "Bootstrap") or None
    return await _call(request, acl.objects.bootstrap, secret)


@consul_errors
async def token_create(request: web.Request) -> web.Response:
    acl, _, _ = await _guard(request, Access.WRITE)
    return await _call(request, acl.objects.token_create, await json_body(request))


@consul_errors
async def token_self(request: web.Request) -> web.Response:
    acl = _service(request)
    opts = options(request)
    await authorize(request, opts)  # an unknown token: "ACL not found"
    return await _call(request, acl.objects.token_self, opts.token)


@consul_errors
async def token_read(request: web.Request) -> web.Response:
    acl, _, _ = await _guard(request, Access.READ)
    return await _call(request, acl.objects.token_read, request.match_info["id"])


@consul_errors
async def token_update(request: web.Request) -> web.Response:
    acl, _, _ = await _guard(request, Access.WRITE)
    body = await json_body(request)
    return await _call(request, acl.objects.token_update, request.match_info["id"], body)


@consul_errors
async def token_delete(request: web.Request) -> web.Response:
    acl, authz, _ = await _guard(request, Access.WRITE)
    await run(request, acl.objects.token_delete, request.match_info["id"], authz.accessor)
    return reply(True)


@consul_errors
async def token_clone(request: web.Request) -> web.Response:
    acl, _, _ = await _guard(request, Access.WRITE)
    body = await json_body(request)
    return await _call(request, acl.objects.token_clone, request.match_info["id"], body)


@consul_errors
async def tokens(request: web.Request) -> web.Response:
    acl, _, _ = await _guard(request, Access.READ)
    q = request.query
    return await _call(request, acl.objects.tokens, q.get("policy", ""), q.get("role", ""))


@consul_errors
async def policy_create(request: web.Request) -> web.Response:
    acl, _, _ = await _guard(request, Access.WRITE)
    return await _parsing(acl.objects.policy_create, await json_body(request))


@consul_errors
async def policy_read(request: web.Request) -> web.Response:
    acl, _, _ = await _guard(request, Access.READ)
    return await _call(request, acl.objects.policy_read, request.match_info["id"])


@consul_errors
async def policy_read_name(request: web.Request) -> web.Response:
    acl, _, _ = await _guard(request, Access.READ)
    return await _call(request, acl.objects.policy_read_name, request.match_info["name"])


@consul_errors
async def policy_update(request: web.Request) -> web.Response:
    acl, _, _ = await _guard(request, Access.WRITE)
    body = await json_body(request)
    return await _parsing(acl.objects.policy_update, request.match_info["id"], body)


@consul_errors
async def policy_delete(request: web.Request) -> web.Response:
    acl, _, _ = await _guard(request, Access.WRITE)
    await run(request, acl.objects.policy_delete, request.match_info["id"])
    return reply(True)


@consul_errors
async def policies(request: web.Request) -> web.Response:
    acl, _, _ = await _guard(request, Access.READ)
    return await _call(request, acl.objects.policies)


@consul_errors
async def role_create(request: web.Request) -> web.Response:
    acl, _, _ = await _guard(request, Access.WRITE)
    return await _call(request, acl.objects.role_create, await json_body(request))


@consul_errors
async def role_read(request: web.Request) -> web.Response:
    acl, _, _ = await _guard(request, Access.READ)
    return await _call(request, acl.objects.role_read, request.match_info["id"])


@consul_errors
async def role_read_name(request: web.Request) -> web.Response:
    acl, _, _ = await _guard(request, Access.READ)
    return await _call(request, acl.objects.role_read_name, request.match_info["name"])


@consul_errors
async def role_update(request: web.Request) -> web.Response:
    acl, _, _ = await _guard(request, Access.WRITE)
    body = await json_body(request)
    return await _call(request, acl.objects.role_update, request.match_info["id"], body)


@consul_errors
async def role_delete(request: web.Request) -> web.Response:
    acl, _, _ = await _guard(request, Access.WRITE)
    await run(request, acl.objects.role_delete, request.match_info["id"])
    return reply(True)


@consul_errors
async def roles(request: web.Request) -> web.Response:
    acl, _, _ = await _guard(request, Access.READ)
    return await _call(request, acl.objects.roles, request.query.get("policy", ""))


@consul_errors
async def agent_token(request: web.Request) -> web.Response:
    acl = _service(request)
    opts = options(request)
    authz = await authorize(request, opts)
    authz.need("agent", acl.node_name, Access.WRITE)
    name = request.match_info["kind"]
    kind = agent_token_kind(name)
    if kind is None:
        raise NotFound(f'Token "{name}" is unknown')
    body = body_map(await json_body(request), "Token")
    await run(request, acl.set_agent_token, kind, text(body, "Token", "Token"))
    return web.Response(status=200)


@consul_errors
async def disabled(request: web.Request) -> web.Response:
    """Any other /v1/acl/ route: Consul's answers, for what cove lacks."""
    _service(request)
    return web.Response(status=404, text=f"cove does not implement {request.path}")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_put("/v1/acl/bootstrap", bootstrap)
    r.add_put("/v1/acl/token", token_create)
    r.add_get("/v1/acl/token/self", token_self)
    r.add_put("/v1/acl/token/{id}/clone", token_clone)
    r.add_get("/v1/acl/token/{id}", token_read)
    r.add_put("/v1/acl/token/{id}", token_update)
    r.add_delete("/v1/acl/token/{id}", token_delete)
    r.add_get("/v1/acl/tokens", tokens)
    r.add_put("/v1/acl/policy", policy_create)
    r.add_get("/v1/acl/policy/name/{name}", policy_read_name)
    r.add_get("/v1/acl/policy/{id}", policy_read)
    r.add_put("/v1/acl/policy/{id}", policy_update)
    r.add_delete("/v1/acl/policy/{id}", policy_delete)
    r.add_get("/v1/acl/policies", policies)
    r.add_put("/v1/acl/role", role_create)
    r.add_get("/v1/acl/role/name/{name}", role_read_name)
    r.add_get("/v1/acl/role/{id}", role_read)
    r.add_put("/v1/acl/role/{id}", role_update)
    r.add_delete("/v1/acl/role/{id}", role_delete)
    r.add_get("/v1/acl/roles", roles)
    r.add_put("/v1/agent/token/{kind}", agent_token)
    for method in ("GET", "PUT", "POST", "DELETE"):
        r.add_route(method, "/v1/acl/{rest:.*}", disabled)
