"""Native API for the cluster's nodes: ``GET /api/members``, every node that
ever joined with its advertise address, status (alive, left, failed) and
container count; ``DELETE /api/members/{name}[?force=true]``, removing a
dead node and everything it owned (``cove.cluster.removal``): 409 for a
live node without ``force``, 404 for a node never seen."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from cove.api import http as web
from cove.cluster.nodes import Member
from cove.cluster.removal import Removed
from cove.errors import InvalidArgument

Remover = Callable[[str, bool], Removed]


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value in ("", "1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise InvalidArgument(f"invalid {name}={value!r}: expected true or false")


def install(
    app: web.Application,
    members: Callable[[], Sequence[Member]],
    remove: Remover | None = None,
) -> None:
    async def list_(request: web.Request) -> web.Response:
        found = await asyncio.to_thread(members)
        return web.json_response([m.to_json() for m in found])

    app.router.add_get("/api/members", list_)
    if remove is None:
        return

    async def remove_(request: web.Request) -> web.Response:
        force = _flag(request, "force")
        removed = await asyncio.to_thread(remove, request.match_info["name"], force)
        return web.json_response(removed.to_json())

    app.router.add_delete("/api/members/{name}", remove_)
