"""Native API for containers: /api/containers and network connect/disconnect.

Handlers run the blocking service calls in threads; ``logs?follow=1``
streams the log file until the container stops or the client goes away.
The service answers with records (``cove.runtime.view``); ``container_json``
and ``exec_json`` are the only places they become the JSON the CLI reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cove.api import http as web
from cove.api.app import json_body, query_bool
from cove.errors import InvalidArgument, NotFound
from cove.runtime.logfile import Frame, LogCursor, LogQuery, frame
from cove.runtime.service import ContainerService
from cove.runtime.spec import Container, RunSpec
from cove.runtime.state import Status
from cove.runtime.view import ContainerView, ExecInfo
from cove.timefmt import parse_time_ns, rfc3339, rfc3339_nano

_FOLLOW_POLL = 0.1
# A followed container is first checked every few ms, then less often up to
# _FOLLOW_POLL: `run IMAGE true` ends as soon as its command does, and a
# long-running one costs no more than before.
_FOLLOW_FIRST = 0.004


async def _nothing() -> None:
    return None


def install(
    app: web.Application,
    service: ContainerService,
    default_network: Callable[[], Awaitable[None]] = _nothing,
) -> None:
    """``default_network`` makes sure the network a container without
    ``--network`` joins exists (``cove.api.networks.default_network``)."""

    async def run(request: web.Request) -> web.Response:
        spec = RunSpec.from_json(await json_body(request))
        if spec.default_network:
            await default_network()
        view = await asyncio.to_thread(service.run, spec)
        return web.json_response(container_json(view), status=201)

    async def list_(request: web.Request) -> web.Response:
        views = await asyncio.to_thread(service.list_all, query_bool(request, "all"))
        return web.json_response([container_json(v) for v in views])

    async def inspect(request: web.Request) -> web.Response:
        view = await asyncio.to_thread(service.inspect, request.match_info["name"])
        return web.json_response(container_json(view))

    async def stop(request: web.Request) -> web.Response:
        timeout = _float(request.query.get("timeout", "10"), "timeout")
        view = await asyncio.to_thread(service.stop, request.match_info["name"], timeout)
        return web.json_response(container_json(view))

    async def start(request: web.Request) -> web.Response:
        view = await asyncio.to_thread(service.start, request.match_info["name"])
        return web.json_response(container_json(view))

    async def remove(request: web.Request) -> web.Response:
        c = await asyncio.to_thread(service.get, request.match_info["name"])
        force, volumes = query_bool(request, "force"), query_bool(request, "volumes")
        await asyncio.to_thread(service.remove, c.id, force, volumes)
        return web.json_response({"removed": c.name, "id": c.id})

    async def exec_info(request: web.Request) -> web.Response:
        info = await asyncio.to_thread(service.exec_info, request.match_info["name"])
        return web.json_response(exec_json(info))

    async def attach_info(request: web.Request) -> web.Response:
        info = await asyncio.to_thread(service.attach_info, request.match_info["name"])
        return web.json_response(
            {"id": info.id, "name": info.name, "socket": info.socket, "tty": info.tty,
             "interactive": info.interactive}
        )  # fmt: skip

    async def logs(request: web.Request) -> web.StreamResponse:
        info = await asyncio.to_thread(service.inspect, request.match_info["name"])
        # By name from here on: an ID or prefix is resolved once, not per poll.
        name = info.container.name
        await asyncio.to_thread(service.check_local, name, "logs")
        follow = query_bool(request, "follow")
        query = log_query(request)
        mux = query_bool(request, "multiplex")
        kind = "application/vnd.docker.multiplexed-stream" if mux else "application/octet-stream"
        resp = web.StreamResponse(headers={"Content-Type": kind})
        await resp.prepare(request)
        try:
            f = open(info.log_path, "rb")  # noqa: SIM115 - closed below, across awaits
        except FileNotFoundError:
            await resp.write_eof()
            return resp
        cursor = LogCursor(f, query)
        try:
            await asyncio.to_thread(cursor.start)
            pause = _FOLLOW_FIRST
            while True:
                await send_log(resp, cursor, mux)
                if not follow or cursor.past_until:
                    break
                if query.until and rfc3339_nano(time.time_ns()) > query.until:
                    break
                try:
                    status = (await asyncio.to_thread(service.inspect, name)).state.status
                except NotFound:
                    break
                if status not in (Status.RUNNING, Status.RESTARTING):
                    await send_log(resp, cursor, mux)
                    break
                await asyncio.sleep(pause)
                pause = min(pause * 2, _FOLLOW_POLL)
            await write_frames(resp, cursor.rest(), mux)
        except (ConnectionResetError, asyncio.CancelledError):
            with contextlib.suppress(Exception):
                f.close()
            raise
        f.close()
        await resp.write_eof()
        return resp

    async def add_service(request: web.Request) -> web.Response:
        data = await json_body(request)
        if not isinstance(data, dict) or not isinstance(data.get("service"), str):
            raise InvalidArgument("'service' is required: NAME:PORT[:TAG,...]")
        view = await asyncio.to_thread(
            service.add_service, request.match_info["name"], data["service"]
        )
        return web.json_response(container_json(view))

    async def remove_service(request: web.Request) -> web.Response:
        view = await asyncio.to_thread(
            service.remove_service, request.match_info["name"], request.match_info["service"]
        )
        return web.json_response(container_json(view))

    async def connect(request: web.Request) -> web.Response:
        data = await json_body(request)
        container, aliases, ip = _connect_args(data)
        view = await asyncio.to_thread(
            service.connect, request.match_info["network"], container, aliases, ip
        )
        return web.json_response(container_json(view))

    async def disconnect(request: web.Request) -> web.Response:
        container, _, _ = _connect_args(await json_body(request))
        view = await asyncio.to_thread(service.disconnect, request.match_info["network"], container)
        return web.json_response(container_json(view))

    r = app.router
    r.add_post("/api/containers", run)
    r.add_get("/api/containers", list_)
    r.add_get("/api/containers/{name}", inspect)
    r.add_delete("/api/containers/{name}", remove)
    r.add_post("/api/containers/{name}/stop", stop)
    r.add_post("/api/containers/{name}/start", start)
    r.add_get("/api/containers/{name}/logs", logs)
    r.add_get("/api/containers/{name}/exec", exec_info)
    r.add_get("/api/containers/{name}/attach", attach_info)
    r.add_post("/api/containers/{name}/services", add_service)
    r.add_delete("/api/containers/{name}/services/{service}", remove_service)
    r.add_post("/api/networks/{network}/connect", connect)
    r.add_post("/api/networks/{network}/disconnect", disconnect)


def container_json(view: ContainerView) -> dict[str, Any]:
    """What ``inspect``, ``ps`` and the answers to run, stop, start, connect
    and disconnect send: the stored container and, after it, its state."""
    c = view.container
    body = c.to_json()
    body["created"] = rfc3339(c.created)
    body["short_id"] = view.short_id
    body["capabilities"] = sorted(f"CAP_{name}" for name in c.capabilities)
    state = view.state
    body["state"] = {
        "status": state.status.value,
        "pid": state.pid,
        "exit_code": state.exit_code,
        "started_at": rfc3339(state.started_at),
        "finished_at": rfc3339(state.finished_at),
        "restart_count": state.restart_count,
        "error": state.error,
    }
    body["endpoints"] = {
        ep.network: {
            "endpoint_id": ep.id,
            "interface": ep.interface,
            "host_veth": ep.host_veth,
            "mac": ep.mac,
            "ipv4": str(ep.ipv4) if ep.ipv4 else None,
            "ipv6": str(ep.ipv6) if ep.ipv6 else None,
            "aliases": list(ep.aliases),
        }
        for ep in view.endpoints
    }
    body["network_settings"] = _network_settings(view)
    body["host_config"] = {"network_mode": network_mode(c)}
    body["netns"] = view.netns
    body["log_path"] = str(view.log_path)
    return body


def network_mode(c: Container) -> str:
    """Docker's ``HostConfig.NetworkMode``: ``host``, ``none`` or the
    container's first network."""
    if c.network_mode:
        return c.network_mode
    return c.networks[0] if c.networks else "none"


def _network_settings(view: ContainerView) -> dict[str, Any]:
    """Docker's ``NetworkSettings`` paths (``{{.NetworkSettings.IPAddress}}``,
    ``{{.NetworkSettings.Networks.NET.IPAddress}}``): the first network's
    addresses at the top, every network's below."""
    nets = {
        ep.network: {
            "ip_address": str(ep.ipv4) if ep.ipv4 else "",
            "global_ipv6_address": str(ep.ipv6) if ep.ipv6 else "",
            "mac_address": ep.mac,
            "aliases": list(ep.aliases),
            "endpoint_id": ep.id,
        }
        for ep in view.endpoints
    }
    first = nets[view.endpoints[0].network] if view.endpoints else {}
    return {
        "ip_address": first.get("ip_address", ""),
        "global_ipv6_address": first.get("global_ipv6_address", ""),
        "mac_address": first.get("mac_address", ""),
        "ports": [str(p) for p in view.container.ports],
        "networks": nets,
    }


def exec_json(info: ExecInfo) -> dict[str, Any]:
    """What ``GET /api/containers/{name}/exec`` sends ``cove exec``."""
    return {
        "pid": info.pid,
        "env": dict(info.env),
        "workdir": info.workdir,
        "id": info.id,
        "capabilities": list(info.capabilities),
        "seccomp": info.seccomp,
        "user": info.user,
    }


def log_query(request: web.Request) -> LogQuery:
    """``tail``, ``since``, ``until`` (what ``cove logs`` takes: Unix
    seconds as the CLI sends them, or an RFC 3339 time or a duration before
    now) and ``timestamps``; ``InvalidArgument`` naming a bad one."""
    now = time.time_ns()
    bounds = []
    for key in ("since", "until"):
        text = request.query.get(key, "")
        ns = parse_time_ns(text, now, key) if text not in ("", "0") else 0  # 0: unset, as Docker
        bounds.append(rfc3339_nano(ns) if ns > 0 else "")
    return LogQuery(
        since=bounds[0],
        until=bounds[1],
        tail=_tail(request.query.get("tail", "")),
        timestamps=query_bool(request, "timestamps"),
    )


async def send_log(resp: web.StreamResponse, cursor: LogCursor, mux: bool) -> None:
    """Send what the log holds now (up to a line later than ``until``)."""
    while (frames := await asyncio.to_thread(cursor.read)) is not None:
        await write_frames(resp, frames, mux)
        if cursor.past_until:
            break


async def write_frames(resp: web.StreamResponse, frames: list[Frame], mux: bool) -> None:
    if frames:
        join = (frame(s, d) for s, d in frames) if mux else (d for _, d in frames)
        await resp.write(b"".join(join))


def _tail(text: str) -> int | None:
    if text in ("", "all"):
        return None
    if not text.isdigit():
        raise InvalidArgument(f"invalid tail {text!r}: a number of lines or 'all'")
    return int(text)


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
