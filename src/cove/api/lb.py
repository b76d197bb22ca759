"""Native API for service VIPs: /api/vips.

A change answers once the VIP table in the kernel has it, so a user who
sees success can connect to the VIP at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cove.api import http as web
from cove.api.app import json_body
from cove.errors import DatapathError, InvalidArgument
from cove.lb.backends import address
from cove.lb.controller import LbController
from cove.lb.model import Proto, Vip
from cove.lb.vips import VipService

APPLY_TIMEOUT = 10.0


def vip_json(vip: Vip, controller: LbController) -> dict[str, Any]:
    out = vip.to_json()
    svc = controller.applied.get(vip.service)
    out["backends"] = [
        {"address": str(b.address), "port": b.port, "weight": b.weight, "vip_port": g.vport}
        for g in (svc.groups if svc else ())
        for b in g.backends
    ]
    return out


def install(app: web.Application, vips: VipService, controller: LbController) -> None:
    async def settle(revision: int) -> None:
        ok = await asyncio.to_thread(controller.wait_applied, revision, APPLY_TIMEOUT)
        if not ok:
            raise DatapathError("the VIP table did not converge in time; see the agent's log")

    async def list_(_: web.Request) -> web.Response:
        found = await asyncio.to_thread(vips.list)
        return web.json_response([vip_json(v, controller) for v in found])

    async def get(request: web.Request) -> web.Response:
        vip = await asyncio.to_thread(vips.get, request.match_info["service"])
        return web.json_response(vip_json(vip, controller))

    async def put(request: web.Request) -> web.Response:
        body = await json_body(request)
        if not isinstance(body, dict):
            raise InvalidArgument("expected a JSON object")
        try:
            addr = address(str(body["address"])) if body.get("address") else None
            port = int(body["port"]) if body.get("port") is not None else None
            protocols = tuple(Proto(p) for p in body.get("protocols") or ("tcp", "udp"))
            affinity = int(body.get("affinity_timeout") or 0)
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(f"invalid VIP request: {exc}") from exc
        vip = await asyncio.to_thread(
            lambda: vips.assign(
                request.match_info["service"],
                addr,
                port=port,
                protocols=protocols,
                affinity_timeout=affinity,
            )
        )
        await settle(controller_revision(controller))
        return web.json_response(vip_json(vip, controller))

    async def delete(request: web.Request) -> web.Response:
        await asyncio.to_thread(vips.release, request.match_info["service"])
        await settle(controller_revision(controller))
        return web.Response(status=204)

    app.router.add_get("/api/vips", list_)
    app.router.add_get("/api/vips/{service}", get)
    app.router.add_put("/api/vips/{service}", put)
    app.router.add_delete("/api/vips/{service}", delete)


def controller_revision(controller: LbController) -> int:
    return controller.store_revision
