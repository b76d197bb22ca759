"""/v1/event/fire/:name and /v1/event/list: user events, as Consul's
(agent/event_endpoint.go), over ``cove.registry.events``."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from cove.acl import Access
from cove.api import http as web
from cove.api.consul.common import (
    FILTERED,
    authorize,
    consul_errors,
    ctx,
    options,
    reply,
    run,
    write,
)
from cove.registry.blocking import blocking_read
from cove.registry.events import uuid_index
from cove.registry.keys import EVENTS
from cove.registry.queries import Answer


@consul_errors
async def fire(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    name = request.match_info["name"]
    authz.need("event", name, Access.WRITE)
    payload = await request.read()
    q = request.query
    event = await write(
        request,
        lambda: ctx(request).registry.events.fire(
            name,
            payload,
            node_filter=q.get("node", ""),
            service_filter=q.get("service", ""),
            tag_filter=q.get("tag", ""),
        ),
    )
    return reply(event)


def _read(request: web.Request, name: str) -> Answer:
    reg = ctx(request).registry
    services: dict[str, list[str]] = {}
    for svc in reg.queries.agent_services(reg.node_name).values():
        have = services.setdefault(svc["Service"], [])
        have.extend(svc.get("Tags") or ())
    return reg.events.list(reg.node_name, services, name)


def _hashed(answer: Answer) -> int:
    return uuid_index(answer.data[-1]["ID"]) if answer.data else 1


@consul_errors
async def list_events(request: web.Request) -> web.Response:
    """Blocking on Consul's hashed index: with ?index, wait (up to ?wait)
    until the hash of the last event differs from it."""
    opts = options(request)
    authz = await authorize(request, opts)
    name = request.query.get("name", "")
    c = ctx(request)
    answer: Answer = await run(request, _read, request, name)
    if opts.index and _hashed(answer) == opts.index and c.interests is not None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + opts.wait
        reclaimed = request.reclaimed()

        async def once() -> Answer:
            fresh: Answer = await run(request, _read, request, name)
            return fresh

        while _hashed(answer) == opts.index:
            remaining = deadline - loop.time()
            if remaining <= 0 or reclaimed.done():
                break
            answer = await blocking_read(
                c.interests,
                once,
                max(answer.index, 1),
                remaining,
                prefixes_hint=(EVENTS,),
                reclaimed=reclaimed,
            )
    events: list[Any] = answer.data
    removed = False
    if authz.enabled:
        kept = [e for e in events if authz.allowed("event", e["Name"], Access.READ)]
        removed = len(kept) != len(events)
        answer = replace(answer, data=kept)
    response = reply(answer.data, _hashed(answer))
    if removed:
        response.headers[FILTERED] = "true"
    return response


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_put("/v1/event/fire/{name}", fire)
    r.add_get("/v1/event/list", list_events)
