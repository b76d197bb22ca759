"""Native API for named volumes: create, list, inspect, remove, prune.
Volumes are this host's directories (``cove.runtime.volumes``); whether a
container uses one is asked of the container service (``users``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from cove.api import http as web
from cove.api.app import json_body, query_bool
from cove.errors import InvalidArgument
from cove.runtime.volumes import Volume, VolumeStore
from cove.timefmt import rfc3339


def volume_json(volume: Volume) -> dict[str, Any]:
    """As Docker's (``{{.Mountpoint}}``, ``{{.CreatedAt}}``): times in RFC 3339."""
    body = volume.to_json()
    body["created_at"] = rfc3339(body.pop("created"))
    return body


def install(app: web.Application, store: VolumeStore, users: Callable[[str], list[str]]) -> None:
    async def create(request: web.Request) -> web.Response:
        data = await json_body(request)
        if not isinstance(data, dict):
            raise InvalidArgument("request body must be a JSON object")
        name, labels = data.get("name") or "", data.get("labels") or {}
        if not isinstance(name, str):
            raise InvalidArgument("'name' must be a string")
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise InvalidArgument("'labels' must be an object of strings")
        volume, new = await asyncio.to_thread(store.create, name, labels)
        return web.json_response(volume_json(volume), status=201 if new else 200)

    async def list_(request: web.Request) -> web.Response:
        volumes = await asyncio.to_thread(store.all)
        return web.json_response([volume_json(v) for v in volumes])

    async def inspect(request: web.Request) -> web.Response:
        volume = await asyncio.to_thread(store.get, request.match_info["name"])
        body = volume_json(volume)
        body["containers"] = await asyncio.to_thread(users, volume.name)
        return web.json_response(body)

    async def remove(request: web.Request) -> web.Response:
        force = query_bool(request, "force")
        done = await asyncio.to_thread(
            lambda: store.remove(request.match_info["name"], users, force=force)
        )
        return web.json_response({"removed": done})

    async def prune(request: web.Request) -> web.Response:
        everything = query_bool(request, "all")
        removed = await asyncio.to_thread(lambda: store.prune(users, everything=everything))
        return web.json_response({"removed": removed})

    r = app.router
    r.add_post("/api/volumes", create)
    r.add_get("/api/volumes", list_)
    r.add_post("/api/volumes/prune", prune)
    r.add_get("/api/volumes/{name}", inspect)
    r.add_delete("/api/volumes/{name}", remove)
