"""Native API for networks: /api/networks.

A create or remove answers once the kernel matches the store (the
reconciler has applied the write), so a CLI user who sees success can use
the bridge at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from cove.api import http as web
from cove.api.app import json_body
from cove.errors import DatapathError
from cove.model import Endpoint, Network
from cove.network.reconcile import NetworkReconciler
from cove.network.service import NetworkService
from cove.network.spec import NetworkSpec

APPLY_TIMEOUT = 10.0


def network_json(network: Network, endpoints: Sequence[Endpoint] | None = None) -> dict[str, Any]:
    """A network as create, ls and inspect send it; inspect adds its endpoints."""
    out = network.to_json()
    if endpoints is not None:
        out["endpoints"] = [endpoint_json(ep) for ep in endpoints]
    return out


def endpoint_json(ep: Endpoint) -> dict[str, Any]:
    # Keys sorted: inspect sent the stored JSON as it was, written with sort_keys.
    return dict(sorted(ep.to_json().items()))


def install(app: web.Application, networks: NetworkService, reconciler: NetworkReconciler) -> None:
    async def settle(revision: int, bridge: str) -> None:
        ok = await asyncio.to_thread(reconciler.wait_applied, revision, APPLY_TIMEOUT)
        if not ok:
            raise DatapathError("the kernel did not converge in time; see the agent's log")
        error = reconciler.error_for(bridge)
        if error:
            raise DatapathError(error)

    async def create(request: web.Request) -> web.Response:
        spec = NetworkSpec.from_json(await json_body(request))
        network, revision = await asyncio.to_thread(networks.create, spec)
        await settle(revision, network.bridge)
        return web.json_response(network_json(network), status=201)

    async def list_(_: web.Request) -> web.Response:
        nets = await asyncio.to_thread(networks.list)
        return web.json_response([network_json(n) for n in nets])

    async def inspect(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        network = await asyncio.to_thread(networks.get, name)
        endpoints = await asyncio.to_thread(networks.endpoints, name)
        return web.json_response(network_json(network, endpoints))

    async def remove(request: web.Request) -> web.Response:
        network = await asyncio.to_thread(networks.get, request.match_info["name"])
        revision = await asyncio.to_thread(networks.remove, network.name)
        await settle(revision, network.bridge)
        return web.json_response({"removed": request.match_info["name"]})

    async def prune(_: web.Request) -> web.Response:
        removed, revision = await asyncio.to_thread(networks.prune)
        await settle(revision, "")
        return web.json_response({"removed": removed})

    app.router.add_post("/api/networks", create)
    app.router.add_get("/api/networks", list_)
    app.router.add_post("/api/networks/prune", prune)
    app.router.add_get("/api/networks/{name}", inspect)
    app.router.add_delete("/api/networks/{name}", remove)
