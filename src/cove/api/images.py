"""Native API for images: list, remove, and where the store is.

Loading and pulling are done by the CLI itself, as root on this host,
straight into the store (``image-store`` tells it where), with progress on
its own terminal and no archive passed through the agent's memory; the
store's lock keeps them apart from ``rmi``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cove.api import http as web
from cove.api.app import query_bool
from cove.errors import InvalidArgument
from cove.image.store import ImageStore


def install(app: web.Application, store: ImageStore, users: Callable[[str], list[str]]) -> None:
    async def list_(request: web.Request) -> web.Response:
        images = await asyncio.to_thread(store.images)
        return web.json_response([i.to_json() for i in images])

    async def inspect(request: web.Request) -> web.Response:
        image = await asyncio.to_thread(store.get, _ref(request))
        return web.json_response(image.to_json())

    async def remove(request: web.Request) -> web.Response:
        force = query_bool(request, "force")
        done = await asyncio.to_thread(store.remove, _ref(request), lambda i: users(i.id), force)
        return web.json_response({"done": done})

    async def where(request: web.Request) -> web.Response:
        return web.json_response({"root": str(store.root)})

    r = app.router
    r.add_get("/api/images", list_)
    r.add_get("/api/images/inspect", inspect)
    r.add_delete("/api/images", remove)
    r.add_get("/api/image-store", where)


def _ref(request: web.Request) -> str:
    ref = request.query.get("ref", "")
    if not ref:
        raise InvalidArgument("an image reference (?ref=) is required")
    return ref
