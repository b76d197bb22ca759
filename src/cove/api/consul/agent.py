"""/v1/agent/...: this agent's services, checks, maintenance and identity."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cove.acl import Access, Authorizer
from cove.api import http as web
from cove.api.consul.catalog import check_allowed
from cove.api.consul.common import (
    FILTERED,
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
from cove.codec import loads
from cove.errors import InvalidArgument
from cove.registry import VERSION
from cove.registry import filter_schema as fs
from cove.registry import types as t
from cove.registry.decode import check_from_json, fold, service_from_json, text
from cove.registry.filter import Predicate, select
from cove.registry.queries import member_json
from cove.registry.types import Status


def leader_address(request: web.Request) -> str:
    return f"{ctx(request).registry.node.address}:8300"


@consul_errors
async def service_register(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    c = ctx(request)
    body = await json_body(request)
    inst, checks = service_from_json(body, c.registry.node_name)
    authz.need("service", inst.name, Access.WRITE)
    await write(
        request,
        lambda: c.registry.catalog.register_service(
            inst,
            checks,
            replace_existing_checks=flag(request, "replace-existing-checks"),
            enable_script_checks=c.registry.enable_script_checks,
        ),
    )
    if c.runner is not None:
        c.runner.kick()
    return web.Response(status=200)


@consul_errors
async def service_deregister(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    c = ctx(request)
    await _need_service(request, authz, request.match_info["id"])
    await write(request, c.registry.catalog.deregister_service, request.match_info["id"])
    if c.runner is not None:
        c.runner.kick()
    return web.Response(status=200)


@consul_errors
async def services(request: web.Request) -> web.Response:
    opts = options(request, fs.AGENT_SERVICE)
    authz = await authorize(request, opts)
    c = ctx(request)
    data = await run(request, c.registry.queries.agent_services, c.registry.node_name)
    return _acl_reply(
        data, opts.predicate, authz, lambda v: authz.allowed("service", v["Service"], Access.READ)
    )


def _hash_index(raw: str | None) -> int:
    """The index a ``?hash=`` stands for: cove's ContentHash is the
    service's mod revision in hex. Any other string is a hash the service
    does not have, so the answer comes at once (as in Consul)."""
    try:
        return int(raw or "", 16)
    except ValueError:
        return 0


@consul_errors
async def service(request: web.Request) -> web.Response:
    """Consul blocks this endpoint on the content hash only (``?hash=`` and
    ``?wait=``, answered with ``X-Consul-ContentHash``)."""
    opts = options(request)
    if "hash" in request.query:
        opts = replace(opts, index=_hash_index(request.query["hash"]))
    c = ctx(request)
    sid = request.match_info["id"]
    answer = await blocking(
        request, opts, lambda: c.registry.queries.agent_service(c.registry.node_name, sid)
    )
    if not answer.found:
        return web.Response(status=404, text=f"unknown service ID: {sid}")
    authz = await authorize(request, opts)
    authz.need("service", answer.data["Service"], Access.READ)
    response = reply(answer.data, answer.index)
    response.headers["X-Consul-ContentHash"] = answer.data["ContentHash"]
    return response


@consul_errors
async def checks(request: web.Request) -> web.Response:
    opts = options(request, fs.HEALTH_CHECK)
    authz = await authorize(request, opts)
    c = ctx(request)
    data = await run(request, c.registry.queries.agent_checks, c.registry.node_name)
    return _acl_reply(data, opts.predicate, authz, lambda v: check_allowed(authz, v))


@consul_errors
async def check_register(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    c = ctx(request)
    definition, status = check_from_json(await json_body(request))
    if authz.enabled:
        if definition.service_id:
            await _need_service(request, authz, definition.service_id)
        else:
            authz.need("node", c.registry.node_name, Access.WRITE)
    await write(
        request,
        lambda: c.registry.catalog.register_check(
            definition, status, enable_script_checks=c.registry.enable_script_checks
        ),
    )
    if c.runner is not None:
        c.runner.kick()
    return web.Response(status=200)


@consul_errors
async def check_deregister(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    c = ctx(request)
    await _need_check(request, authz, request.match_info["id"])
    await write(request, c.registry.catalog.deregister_check, request.match_info["id"])
    if c.runner is not None:
        c.runner.kick()
    return web.Response(status=200)


_TTL_STATUS = {"pass": Status.PASSING, "warn": Status.WARNING, "fail": Status.CRITICAL}


@consul_errors
async def check_ttl(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    await _need_check(request, authz, request.match_info["id"])
    status = _TTL_STATUS[request.match_info["verb"]]
    await _update_ttl(request, request.match_info["id"], status, request.query.get("note", ""))
    return web.Response(status=200)


@consul_errors
async def check_update(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    await _need_check(request, authz, request.match_info["id"])
    d = fold(await json_body(request) or {}, "update")
    status_text = text(d, "status", "Status")
    try:
        status = Status(status_text)
    except ValueError as exc:
        raise InvalidArgument(f'Invalid check status: "{status_text}"') from exc
    await _update_ttl(request, request.match_info["id"], status, text(d, "output", "Output"))
    return web.Response(status=200)


async def _update_ttl(request: web.Request, check_id: str, status: Status, output: str) -> None:
    c = ctx(request)
    if c.runner is None:
        await write(request, c.registry.catalog.update_check, check_id, status, output)
        return
    await c.runner.update_ttl(check_id, status, output)


@consul_errors
async def service_maintenance(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    c = ctx(request)
    enable = _enable(request)
    sid = request.match_info["id"]
    await _need_service(request, authz, sid)
    reason = request.query.get("reason", "")
    await write(request, c.registry.catalog.set_maintenance, sid, enable, reason)
    return web.Response(status=200)


@consul_errors
async def node_maintenance(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    c = ctx(request)
    authz.need("node", c.registry.node_name, Access.WRITE)
    await write(
        request,
        c.registry.catalog.set_maintenance,
        None,
        _enable(request),
        request.query.get("reason", ""),
    )
    return web.Response(status=200)


def _enable(request: web.Request) -> bool:
    if "enable" not in request.query:
        raise InvalidArgument("Missing value for enable")
    value = request.query["enable"].lower()
    if value not in ("true", "false", "1", "0"):
        raise InvalidArgument(f"Invalid value for enable: {value!r}")
    return value in ("true", "1")


@consul_errors
async def self_info(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    reg = ctx(request).registry
    authz.need("agent", reg.node_name, Access.READ)
    leader = leader_address(request)
    # This node's coordinate, when a client has given it one (cove computes none).
    coord = (await run(request, reg.coordinates.of)).get(reg.node_name)
    # The same entry /v1/agent/members lists for this node.
    member = await run(request, reg.queries.member, reg.node_name)
    if member is None:  # not (yet, or no longer) registered
        member = member_json(reg.node.to_json(), reg.datacenter, alive=False)
    return reply(
        {
            "Config": {
                "Datacenter": reg.datacenter,
                "PrimaryDatacenter": reg.datacenter,
                "NodeName": reg.node_name,
                "NodeID": reg.node.id,
                "Revision": "cove",
                "Server": True,
                "Version": VERSION,
                "BuildDate": "2023-11-01T00:00:00Z",
            },
            "DebugConfig": {},
            "Coord": coord,
            "Member": member,
            "Meta": dict(reg.node.meta),
            "Stats": {
                "consul": {
                    "leader": "true",
                    "leader_addr": leader,
                    "server": "true",
                    "known_datacenters": "1",
                    "bootstrap": "true",
                },
                "agent": {"checks": "0", "services": "0"},
            },
            "xDS": None,
        }
    )


@consul_errors
async def members(request: web.Request) -> web.Response:
    opts = options(request, fs.MEMBER)
    authz = await authorize(request, opts)
    c = ctx(request)
    data = await run(request, c.registry.queries.members)
    return _acl_reply(
        data, opts.predicate, authz, lambda m: authz.allowed("node", m["Name"], Access.READ)
    )


def _acl_reply(
    data: Any, predicate: Predicate | None, authz: Authorizer, keep: Any
) -> web.Response:
    """An agent list or map (not a blocking answer), filtered by ACLs."""
    removed = False
    if authz.enabled and not authz.reads_all("service", "node"):
        if isinstance(data, dict):
            kept: Any = {k: v for k, v in data.items() if keep(v)}
        else:
            kept = [v for v in data if keep(v)]
        removed = len(kept) != len(data)
        data = kept
    response = reply(select(predicate, data))
    if removed:
        response.headers[FILTERED] = "true"
    return response


async def _need_service(request: web.Request, authz: Authorizer, service_id: str) -> None:
    """Write on the service registered here as ``service_id`` (an unknown
    ID is left to the registry's own answer)."""
    if not authz.enabled:
        return
    c = ctx(request)
    answer = await run(request, c.registry.queries.agent_service, c.registry.node_name, service_id)
    if answer.found:
        authz.need("service", answer.data["Service"], Access.WRITE)


async def _need_check(request: web.Request, authz: Authorizer, check_id: str) -> None:
    """Write on a check: its service's write, or for a node's own check
    the node's. One key read (the agent's check definition), so a TTL
    update stays cheap on a node with thousands of checks."""
    if not authz.enabled:
        return
    c = ctx(request)
    node = c.registry.node_name
    kv = await run(request, c.registry.store.get, t.agent_check_key(node, check_id))
    service = str(loads(kv.value).get("ServiceName") or "") if kv is not None else ""
    if service:
        authz.need("service", service, Access.WRITE)
    else:
        authz.need("node", node, Access.WRITE)


@consul_errors
async def status_leader(request: web.Request) -> web.Response:
    options(request)
    return reply(leader_address(request))


@consul_errors
async def status_peers(request: web.Request) -> web.Response:
    options(request)
    return reply([leader_address(request)])


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_put("/v1/agent/service/register", service_register)
    r.add_put("/v1/agent/service/deregister/{id}", service_deregister)
    r.add_put("/v1/agent/service/maintenance/{id}", service_maintenance)
    r.add_get("/v1/agent/services", services)
    r.add_get("/v1/agent/service/{id}", service)
    r.add_get("/v1/agent/checks", checks)
    r.add_put("/v1/agent/check/register", check_register)
    r.add_put("/v1/agent/check/deregister/{id}", check_deregister)
    r.add_put("/v1/agent/check/{verb:pass|warn|fail}/{id}", check_ttl)
    r.add_put("/v1/agent/check/update/{id}", check_update)
    r.add_put("/v1/agent/maintenance", node_maintenance)
    r.add_get("/v1/agent/self", self_info)
    r.add_get("/v1/agent/members", members)
    r.add_get("/v1/status/leader", status_leader)
    r.add_get("/v1/status/peers", status_peers)
