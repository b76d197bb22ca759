"""Native API for the cluster's nodes: ``GET /api/members``, every node that
ever joined with its advertise address, status (alive, left, failed) and
container count."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from cove.api import http as web
from cove.cluster.nodes import Member


def install(app: web.Application, members: Callable[[], Sequence[Member]]) -> None:
    async def list_(request: web.Request) -> web.Response:
        found = await asyncio.to_thread(members)
        return web.json_response([m.to_json() for m in found])

    app.router.add_get("/api/members", list_)
