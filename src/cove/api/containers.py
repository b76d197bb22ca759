"""Native API for containers: /api/containers and network connect/disconnect.

Handlers run the blocking service calls in threads; ``logs?follow=1``
streams the log file until the container stops or the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from cove.api import http as web
from cove.api.app import json_body, query_bool
from cove.errors import InvalidArgument, NotFound
from cove.runtime.service import ContainerService
from cove.runtime.spec import RunSpec

_FOLLOW_POLL = 0.1
_CHUNK = 65536


def install(app: web.Application, service: ContainerService) -> None:
    async def run(request: web.Request) -> web.Response:
        spec = RunSpec.from_json(await json_body(request))
        body = await asyncio.to_thread(service.run, spec)
        return web.json_response(body, status=201)

    async def list_(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(service.list_all, query_bool(request, "all"))
        return web.json_response(body)

    async def inspect(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(service.inspect, request.match_info["name"])
        return web.json_response(body)

    async def stop(request: web.Request) -> web.Response:
        timeout = _float(request.query.get("timeout", "10"), "timeout")
        body = await asyncio.to_thread(service.stop, request.match_info["name"], timeout)
        return web.json_response(body)

    async def start(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(service.start, request.match_info["name"])
        return web.json_response(body)

    async def remove(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await asyncio.to_thread(service.remove, name, query_bool(request, "force"))
        return web.json_response({"removed": name})

    async def exec_info(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(service.exec_info, request.match_info["name"])
        return web.json_response(body)

    async def logs(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        info = await asyncio.to_thread(service.inspect, name)
        follow = query_bool(request, "follow")
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        try:
            f = open(info["log_path"], "rb")  # noqa: SIM115 - closed below, across awaits
        except FileNotFoundError:
            await resp.write_eof()
            return resp
        try:
            while True:
                chunk = await asyncio.to_thread(f.read, _CHUNK)
                if chunk:
                    await resp.write(chunk)
                    continue
                if not follow:
                    break
                try:
                    status = (await asyncio.to_thread(service.inspect, name))["state"]["status"]
                except NotFound:
                    break
                if status not in ("running", "restarting"):
                    rest = await asyncio.to_thread(f.read)
                    if rest:
                        await resp.write(rest)
                    break
                await asyncio.sleep(_FOLLOW_POLL)
        except (ConnectionResetError, asyncio.CancelledError):
            with contextlib.suppress(Exception):
                f.close()
            raise
        f.close()
        await resp.write_eof()
        return resp

    async def connect(request: web.Request) -> web.Response:
        data = await json_body(request)
        container, aliases, ip = _connect_args(data)
        body = await asyncio.to_thread(
            service.connect, request.match_info["network"], container, aliases, ip
        )
        return web.json_response(body)

    async def disconnect(request: web.Request) -> web.Response:
        container, _, _ = _connect_args(await json_body(request))
        body = await asyncio.to_thread(service.disconnect, request.match_info["network"], container)
        return web.json_response(body)

    r = app.router
    r.add_post("/api/containers", run)
    r.add_get("/api/containers", list_)
    r.add_get("/api/containers/{name}", inspect)
    r.add_delete("/api/containers/{name}", remove)
    r.add_post("/api/containers/{name}/stop", stop)
    r.add_post("/api/containers/{name}/start", start)
    r.add_get("/api/containers/{name}/logs", logs)
    r.add_get("/api/containers/{name}/exec", exec_info)
    r.add_post("/api/networks/{network}/connect", connect)
    r.add_post("/api/networks/{network}/disconnect", disconnect)


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidArgument(f"'{what}' must be a number") from None


def _connect_args(data: Any) -> tuple[str, tuple[str, ...], str]:
    if not isinstance(data, dict) or not isinstance(data.get("container"), str):
        raise InvalidArgument("'container' is required and must be a string")
    aliases = data.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise InvalidArgument("'aliases' must be a list of strings")
    ip = data.get("ip") or ""
    if not isinstance(ip, str):
        raise InvalidArgument("'ip' must be a string")
    return data["container"], tuple(aliases), ip
