"""/v1/connect/intentions: Consul's intentions API over
``cove.policy.intentions``. cove enforces them in the kernel (its network
policy compiles them), not in sidecar proxies.

ACLs, as Consul's: reading or changing an intention needs intention:read /
intention:write on its destination, granted by the ``intentions``
attribute of the destination's ``service`` rule (read by default when the
service policy is read or write); ``*`` is judged as a name, so only a
``service_prefix ""`` rule covers it.
Where no intention matches, ``/check`` answers with the ACL default policy,
as Consul does (allow when ACLs are off).

Blocking queries (``?index=&wait=``, answered with ``X-Consul-Index``) as
Consul's: on the list, ``/match``, ``/exact`` and by ID, not on ``/check``.
The index is that of the intentions as a whole (the last change to any of
them, deletions included), as Consul's intentions table index is, so any
change wakes a blocked reader. ``?filter`` (bexpr) applies to the list only,
over Consul's documented selectors (``filter_schema.INTENTION``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cove.acl import Access, Authorizer
from cove.api import http as web
from cove.api.consul.common import (
    FILTERED,
    QueryOptions,
    authorize,
    blocking,
    consul_errors,
    ctx,
    json_body,
    options,
    reply,
    run,
)
from cove.errors import InvalidArgument, NotFound
from cove.policy import intentions as pi
from cove.registry import filter_schema as fs
from cove.registry.filter import select
from cove.registry.queries import Answer

PREFIXES = (pi.INTENTIONS,)  # what a blocking read on intentions watches


def _service(request: web.Request) -> pi.IntentionService:
    return pi.IntentionService(ctx(request).registry.store)


def _may(authz: Authorizer, dest: str, need: Access) -> bool:
    # ``*`` is judged as a name: only a ``service_prefix ""`` rule covers it.
    return authz.allowed("intention", dest, need)


def _need(authz: Authorizer, dest: str, need: Access) -> None:
    if not _may(authz, dest, need):
        raise authz.denied(f"intention:{need.value}", dest)


def _query(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if not value:
        raise InvalidArgument(f"required query parameter '{name}' not set")
    return value


async def _read(request: web.Request, intention_id: str) -> pi.Intention:
    pi.check_id(intention_id)
    found: pi.Intention | None = await run(request, _service(request).get, intention_id)
    if found is None:
        raise NotFound(f"Intention not found: {intention_id}")
    return found


@consul_errors
async def create(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    fields = pi.parse_body(await json_body(request))
    _need(authz, fields["dest"], Access.WRITE)
    made: pi.Intention = await run(request, _service(request).create, fields)
    return reply({"ID": made.id})


def _reader(
    request: web.Request, pick: Callable[[list[pi.Intention]], Any]
) -> Callable[[], Answer]:
    """A read of every intention for ``blocking``: ``pick`` makes the data
    from them (None: not found); the index is the intentions' last change."""
    svc = _service(request)

    def read() -> Answer:
        found, revision = svc.list_at()
        data = pick(found)
        index = max((i.modify_index for i in found), default=0)
        return Answer(data, index, revision, PREFIXES, found=data is not None)

    return read


async def _blocking(
    request: web.Request, opts: QueryOptions, pick: Callable[[list[pi.Intention]], Any]
) -> Answer:
    return await blocking(request, opts, _reader(request, pick), PREFIXES)


@consul_errors
async def list_all(request: web.Request) -> web.Response:
    opts = options(request, fs.INTENTION)  # a bad ?filter is a 400 before any wait
    authz = await authorize(request, opts)
    answer = await _blocking(request, opts, lambda found: found)
    found: list[pi.Intention] = answer.data
    kept = [i for i in found if _may(authz, i.dest, Access.READ)]
    response = reply(select(opts.predicate, [i.to_consul() for i in kept]), answer.index)
    if len(kept) != len(found):
        response.headers[FILTERED] = "true"
    return response


def _by_id(intention_id: str) -> Callable[[list[pi.Intention]], pi.Intention | None]:
    return lambda found: next((i for i in found if i.id == intention_id), None)


@consul_errors
async def get_one(request: web.Request) -> web.Response:
    opts = options(request)
    authz = await authorize(request, opts)
    intention_id = pi.check_id(request.match_info["id"])
    answer = await _blocking(request, opts, _by_id(intention_id))
    if not answer.found:
        raise NotFound(f"Intention not found: {intention_id}")
    found: pi.Intention = answer.data
    _need(authz, found.dest, Access.READ)
    return reply(found.to_consul(), answer.index)


@consul_errors
async def update(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    fields = pi.parse_body(await json_body(request))
    old = await _read(request, request.match_info["id"])
    _need(authz, old.dest, Access.WRITE)
    _need(authz, fields["dest"], Access.WRITE)
    await run(request, _service(request).update, old.id, fields)
    return reply(None)


@consul_errors
async def delete(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    old = await _read(request, request.match_info["id"])
    _need(authz, old.dest, Access.WRITE)
    await run(request, _service(request).delete, old.id)
    return reply(True)


def _pair(request: web.Request) -> tuple[str, str]:
    source = pi.check_name(_query(request, "source"), "source")
    dest = pi.check_name(_query(request, "destination"), "destination")
    return source, dest


@consul_errors
async def exact_get(request: web.Request) -> web.Response:
    opts = options(request)
    authz = await authorize(request, opts)
    source, dest = _pair(request)
    _need(authz, dest, Access.READ)

    def pick(found: list[pi.Intention]) -> pi.Intention | None:
        pair = (source.lower(), dest.lower())
        return next((i for i in found if (i.source.lower(), i.dest.lower()) == pair), None)

    answer = await _blocking(request, opts, pick)
    if not answer.found:
        raise NotFound(f"Intention not found: {source} => {dest}")
    intention: pi.Intention = answer.data
    return reply(intention.to_consul(), answer.index)


@consul_errors
async def exact_put(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    source, dest = _pair(request)
    body: Any = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidArgument("Request decode failed: expected a JSON object")
    for key, value in (("SourceName", source), ("DestinationName", dest)):
        if body.get(key) not in (None, "", value):
            raise InvalidArgument(f"{key} in the body must match the query (or be left out)")
    fields = pi.parse_body({**body, "SourceName": source, "DestinationName": dest})
    _need(authz, dest, Access.WRITE)
    await run(request, _service(request).upsert_exact, fields)
    return reply(True)


@consul_errors
async def exact_delete(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    source, dest = _pair(request)
    _need(authz, dest, Access.WRITE)
    svc = _service(request)
    found: pi.Intention | None = await run(request, svc.exact, source, dest)
    if found is not None:
        await run(request, svc.delete, found.id)
    return reply(True)


@consul_errors
async def match(request: web.Request) -> web.Response:
    """Consul checks intentions:read on every name asked about and refuses
    the whole query (403) when one is not readable; what matches a readable
    name is answered whole (agent/consul/intention_endpoint.go, Match)."""
    opts = options(request)
    authz = await authorize(request, opts)
    by = _query(request, "by")
    if by not in ("source", "destination"):
        raise InvalidArgument("'by' must be 'source' or 'destination'")
    names = request.query.getall("name", [])
    if not names:
        raise InvalidArgument("required query parameter 'name' not set")
    for name in names:
        pi.check_name(name, "name")
        _need(authz, name, Access.READ)

    def pick(found: list[pi.Intention]) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for name in names:
            out[name] = [
                i.to_consul()
                for i in found
                if (i.source if by == "source" else i.dest) in (pi.WILDCARD, name)
            ]
        return out

    answer = await _blocking(request, opts, pick)
    return reply(answer.data, answer.index)


@consul_errors
async def check(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    source, dest = _pair(request)
    if dest == pi.WILDCARD or source == pi.WILDCARD:
        raise InvalidArgument("source and destination must be exact names, not '*'")
    # Consul asks service:read here, not intention:read: the answer says
    # only allowed or not (agent/consul/intention_endpoint.go, Check).
    if not authz.allowed("service", dest, Access.READ):
        raise authz.denied("service:read", dest)
    decided: pi.Intention | None = await run(request, _service(request).decide, source, dest)
    if decided is not None:
        allowed = decided.action == pi.ALLOW
    else:
        acl = ctx(request).acl
        allowed = acl is None or acl.default_allow
    return reply({"Allowed": allowed})


def add_routes(app: web.Application) -> None:
    """Before agent_ops: its catch-all refuses the rest of /v1/connect/."""
    r = app.router
    r.add_get("/v1/connect/intentions", list_all)
    r.add_post("/v1/connect/intentions", create)
    r.add_get("/v1/connect/intentions/exact", exact_get)
    r.add_put("/v1/connect/intentions/exact", exact_put)
    r.add_delete("/v1/connect/intentions/exact", exact_delete)
    r.add_get("/v1/connect/intentions/match", match)
    r.add_get("/v1/connect/intentions/check", check)
    r.add_get("/v1/connect/intentions/{id}", get_one)
    r.add_put("/v1/connect/intentions/{id}", update)
    r.add_delete("/v1/connect/intentions/{id}", delete)
