"""The /api/vips and /api/policy routes over in-memory state (no kernel)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from cove.api import http as web
from cove.api import lb as lb_api
from cove.api import policy as policy_api
from cove.api.app import build_app
from cove.clock import ManualClock, SystemClock
from cove.lb.backends import EndpointBackends
from cove.lb.controller import LbController
from cove.lb.vips import VipService
from cove.model import Network, Subnet
from cove.policy.controller import PolicyController
from cove.policy.service import PolicyService
from cove.store import MemoryStore
from cove.store.hub import WatchHub


class RecordingNft:
    def __init__(self) -> None:
        self.tables: dict[str, list[Mapping[str, Any]]] = {}

    def transaction(self, commands: Sequence[Mapping[str, Any]]) -> None:
        pass

    def replace_table(self, family: str, name: str, objects: Sequence[Mapping[str, Any]]) -> None:
        self.tables[name] = list(objects)

    def delete_table(self, family: str, name: str) -> None:
        self.tables.pop(name, None)


def test_routes_answer_and_map_errors() -> None:
    store = MemoryStore(ManualClock())
    net = Network(
        id="a", name="a", bridge="cv-a",
        subnets=(Subnet(ipaddress.ip_network("10.1.0.0/24"), ipaddress.ip_address("10.1.0.1")),),
    )  # fmt: skip
    store.put("networks/a", json.dumps(net.to_json()).encode())
    nft = RecordingNft()
    lb = LbController(store, nft, EndpointBackends(store), clock=SystemClock())
    pol = PolicyController(store, nft, clock=SystemClock())
    app = build_app()
    lb_api.install(app, VipService(store), lb)
    policy_api.install(app, PolicyService(store, ManualClock()), pol)

    hub = WatchHub(store)
    hub.start()

    async def go() -> None:
        lb.start(hub)
        pol.start(hub)
        server = web.HttpServer(app)
        await server.setup()
        try:
            port = await server.start_tcp("127.0.0.1", 0)
            base = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}")
            async with base as c:
                r = await c.put("/api/vips/web", json={"address": "10.96.0.9"})
                assert r.status == 200, await r.text()
                assert (await r.json())["address"] == "10.96.0.9"
                r = await c.put("/api/vips/db", json={"address": "10.96.0.9"})
                assert r.status == 409 and "taken" in (await r.json())["error"]
                r = await c.put("/api/vips/db", json={"address": "8.8.8.8"})
                assert r.status == 400
                r = await c.get("/api/vips")
                assert [v["service"] for v in await r.json()] == ["web"]

                r = await c.post(
                    "/api/policy/rules",
                    json={"network": "a", "from": "container:x", "to": "app=db", "ports": ["5432"]},
                )
                assert r.status == 201, await r.text()
                rid = (await r.json())["id"]
                r = await c.post(
                    "/api/policy/rules", json={"network": "a", "from": "pod:x", "to": "*"}
                )
                assert r.status == 400 and "unknown selector kind" in (await r.json())["error"]
                r = await c.put("/api/policy/default-deny/a", json={"on": True})
                assert r.status == 200 and (await r.json())["default_deny"] is True
                assert any(
                    o.get("element", {}).get("name") == "deny_v4" for o in nft.tables["cove_policy"]
                )
                r = await c.delete(f"/api/policy/rules/{rid}")
                assert r.status == 204
                r = await c.delete(f"/api/policy/rules/{rid}")
                assert r.status == 404
        finally:
            await server.stop()
            lb.stop()
            pol.stop()

    try:
        asyncio.run(go())
    finally:
        hub.stop()
