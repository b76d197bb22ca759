"""Native API for CNI attachments: /api/cni/... (the Unix socket, or an
operator token over HTTPS, like the rest of /api).

Every error carries ``cni_code``, the code ``cove-cni`` answers the runtime
with. A missing network on attach is 7 (invalid configuration), never 3,
which would tell the runtime there is nothing to clean up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from cove.api import http as web
from cove.api.app import json_body
from cove.cni.attachments import Attachment, AttachmentService, AttachRequest, result_json
from cove.errors import CoveError, InvalidArgument, NotFound

Handler = Callable[[web.Request], Coroutine[Any, Any, web.Response]]


def attachment_json(att: Attachment) -> dict[str, Any]:
    return att.to_json()


def _cni_error(exc: CoveError, verb: str) -> web.Response:
    code = exc.cni_code
    if isinstance(exc, NotFound) and verb != "check":
        code = 7
    body = {**exc.to_json(), "cni_code": code}
    return web.json_response(body, status=exc.http_status)


def _verb(name: str, fn: Handler) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        try:
            return await fn(request)
        except CoveError as exc:
            return _cni_error(exc, name)

    return handler


def _obj(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return data


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{key} is required")
    return value


def install(app: web.Application, service: AttachmentService, domain: str = "cove") -> None:
    async def attach(request: web.Request) -> web.Response:
        req = AttachRequest.from_json(await json_body(request))
        att, net = await asyncio.to_thread(service.attach, req)
        return web.json_response(result_json(att, net, domain), status=201)

    async def detach(request: web.Request) -> web.Response:
        data = _obj(await json_body(request))
        cid, ifname = _str(data, "containerID"), _str(data, "ifname")
        network = data.get("network") if isinstance(data.get("network"), str) else ""
        netns = data.get("netns") if isinstance(data.get("netns"), str) else ""
        gone = await asyncio.to_thread(
            service.detach, cid, ifname, str(network or ""), str(netns or "")
        )
        return web.json_response({"removed": attachment_json(gone) if gone else None})

    async def check(request: web.Request) -> web.Response:
        data = _obj(await json_body(request))
        cid, ifname, netns = _str(data, "containerID"), _str(data, "ifname"), _str(data, "netns")
        prev = data.get("prevResult") if isinstance(data.get("prevResult"), dict) else {}
        await asyncio.to_thread(service.check, cid, ifname, netns, prev or {})
        return web.json_response({"ok": True})

    async def gc(request: web.Request) -> web.Response:
        data = _obj(await json_body(request))
        network = _str(data, "network")
        valid = []
        for v in data.get("valid") or []:
            if isinstance(v, dict):
                valid.append((str(v.get("containerID", "")), str(v.get("ifname", ""))))
        errors = await asyncio.to_thread(service.gc, network, valid)
        if errors:
            return web.json_response(
                {
                    "error": f"GC could not remove {len(errors)} attachment(s): "
                    + "; ".join(errors),
                    "kind": "datapath_error",
                    "cni_code": 999,
                },
                status=500,
            )
        return web.json_response({"ok": True})

    async def status(request: web.Request) -> web.Response:
        data = _obj(await json_body(request))
        code, msg = await asyncio.to_thread(service.status, _str(data, "network"))
        return web.json_response({"code": code, "msg": msg})

    async def list_(request: web.Request) -> web.Response:
        network = request.query.get("network") or None
        node = request.query.get("node") or None
        atts = await asyncio.to_thread(service.list, network, node)
        return web.json_response([attachment_json(a) for a in atts])

    app.router.add_post("/api/cni/attach", _verb("attach", attach))
    app.router.add_post("/api/cni/detach", _verb("detach", detach))
    app.router.add_post("/api/cni/check", _verb("check", check))
    app.router.add_post("/api/cni/gc", _verb("gc", gc))
    app.router.add_post("/api/cni/status", _verb("status", status))
    app.router.add_get("/api/cni/attachments", list_)
