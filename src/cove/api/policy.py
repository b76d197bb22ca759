"""Native API for network policy: /api/policy/...

Writes answer once ``inet cove_policy`` has them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cove.api import http as web
from cove.api.app import json_body
from cove.api.metrics import Series
from cove.errors import DatapathError, InvalidArgument
from cove.policy.compile import Count
from cove.policy.controller import PolicyController
from cove.policy.service import PolicyService

APPLY_TIMEOUT = 10.0


def _obj(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidArgument("expected a JSON object")
    return body


def _str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"missing or invalid {key!r}")
    return value


def install(app: web.Application, policy: PolicyService, controller: PolicyController) -> None:
    async def settle() -> None:
        ok = await asyncio.to_thread(
            controller.wait_applied, controller.store_revision, APPLY_TIMEOUT
        )
        if not ok:
            raise DatapathError("the policy table did not converge in time; see the agent's log")
        if controller.last_error:
            raise DatapathError(controller.last_error)

    async def list_(request: web.Request) -> web.Response:
        rules = await asyncio.to_thread(policy.rules, request.query.get("network"))
        return web.json_response([r.to_json() for r in rules])

    async def add(request: web.Request) -> web.Response:
        body = _obj(await json_body(request))
        ports = body.get("ports") or []
        if not isinstance(ports, list):
            raise InvalidArgument("'ports' must be a list of PORT/PROTO")
        rule = await asyncio.to_thread(
            policy.allow,
            _str(body, "network"),
            _str(body, "from"),
            _str(body, "to"),
            [str(p) for p in ports],
            str(body.get("description") or ""),
        )
        await settle()
        return web.json_response(rule.to_json(), status=201)

    async def remove(request: web.Request) -> web.Response:
        await asyncio.to_thread(policy.remove, request.match_info["id"])
        await settle()
        return web.Response(status=204)

    async def default_deny(request: web.Request) -> web.Response:
        body = _obj(await json_body(request))
        on = body.get("on")
        if not isinstance(on, bool):
            raise InvalidArgument("'on' must be true or false")
        net = await asyncio.to_thread(policy.set_default_deny, request.match_info["network"], on)
        await settle()
        return web.json_response(net.to_json())

    async def test(request: web.Request) -> web.Response:
        body = _obj(await json_body(request))
        verdicts = await asyncio.to_thread(
            policy.test, _str(body, "from"), _str(body, "to"), str(body.get("port") or "")
        )
        return web.json_response([v.to_json() for v in verdicts])

    async def status(_: web.Request) -> web.Response:
        return web.json_response(
            {"warning": controller.warning, "last_error": controller.last_error}
        )

    app.router.add_get("/api/policy/rules", list_)
    app.router.add_post("/api/policy/rules", add)
    app.router.add_delete("/api/policy/rules/{id}", remove)
    app.router.add_put("/api/policy/default-deny/{network}", default_deny)
    app.router.add_post("/api/policy/test", test)
    app.router.add_get("/api/policy/status", status)


def counter_series(counts: list[Count]) -> list[Series]:
    """/metrics series of the policy's nft counters: packets dropped by
    each network's default deny and by each deny intention, and packets
    let through by each allow intention."""
    out = []
    for c in counts:
        name, what = (
            ("cove_policy_drops_total", "New connections policy rejected, by network and rule.")
            if c.action == "deny"
            else ("cove_policy_accepts_total", "New connections an intention let in, by network.")
        )
        labels = {"network": c.network, "rule": c.rule}
        out.append(Series(name, what, float(c.packets), labels, kind="counter"))
    return out
