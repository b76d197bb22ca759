"""Native API for CNI attachments: /api/cni/... (the Unix socket, or an
operator token over HTTPS, like the rest of /api).

Every error carries ``cni_code``, the code ``cove-cni`` answers the runtime
with. A missing network on attach is 7 (invalid configuration), never 3,
which would tell the runtime there is nothing to clean up.

``/api/cni/exec`` takes a whole plugin call from the compiled shim
(``cni/shim.c``): the CNI environment as ``X-Cni-*`` headers, the network
configuration as the body; it answers what the plugin would print, with
status 200 for exit 0. The call runs ``cove.cni.plugin`` in the agent, so
the shim needs no JSON and no interpreter start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from cove.api import http as web
from cove.api.app import json_body
from cove.cni import plugin
from cove.cni.attachments import AttachmentService, AttachRequest, result_json
from cove.errors import CoveError, DatapathError, InvalidArgument, NotFound

# CNI environment variables the shim sends as headers.
ENV_HEADERS = {
    f"x-{name.lower().replace('_', '-')}": name
    for name in (
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_ARGS",
        "CNI_PATH",
    )
}


def cni_code(exc: CoveError, verb: str) -> int:
    if isinstance(exc, NotFound) and verb != "check":
        return 7
    return exc.cni_code


def _obj(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidArgument("the request body must be a JSON object")
    return data


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{key} is required")
    return value


def _opt(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


class CniVerbs:
    """The verbs as plain calls (blocking): the routes run them on a thread,
    and ``/api/cni/exec`` runs the plugin in-process against them."""

    def __init__(self, service: AttachmentService, domain: str) -> None:
        self.service = service
        self.domain = domain
        self.by_path: dict[str, Callable[[Any], Any]] = {
            "/api/cni/attach": self.attach,
            "/api/cni/detach": self.detach,
            "/api/cni/check": self.check,
            "/api/cni/gc": self.gc,
            "/api/cni/status": self.status,
        }

    def attach(self, data: Any) -> dict[str, Any]:
        att, net = self.service.attach(AttachRequest.from_json(data))
        return result_json(att, net, self.domain)

    def detach(self, data: Any) -> dict[str, Any]:
        data = _obj(data)
        gone = self.service.detach(
            _str(data, "containerID"), _str(data, "ifname"), _opt(data, "network"),
            _opt(data, "netns"),
        )  # fmt: skip
        return {"removed": gone.to_json() if gone else None}

    def check(self, data: Any) -> dict[str, Any]:
        data = _obj(data)
        prev = data.get("prevResult")
        self.service.check(
            _str(data, "containerID"), _str(data, "ifname"), _str(data, "netns"),
            prev if isinstance(prev, dict) else {},
        )  # fmt: skip
        return {"ok": True}

    def gc(self, data: Any) -> dict[str, Any]:
        data = _obj(data)
        valid = [
            (str(v.get("containerID", "")), str(v.get("ifname", "")))
            for v in data.get("valid") or []
            if isinstance(v, dict)
        ]
        errors = self.service.gc(_str(data, "network"), valid)
        if errors:
            raise DatapathError(
                f"GC could not remove {len(errors)} attachment(s): " + "; ".join(errors)
            )
        return {"ok": True}

    def status(self, data: Any) -> dict[str, Any]:
        code, msg = self.service.status(_str(_obj(data), "network"))
        return {"code": code, "msg": msg}

    def local_call(self, _sock: str, _method: str, path: str, body: Any) -> Any:
        """``cove.cni.plugin``'s agent call, answered in-process."""
        verb = self.by_path[path]
        try:
            return verb(body)
        except CoveError as exc:
            name = path.rsplit("/", 1)[1]
            raise plugin.CniError(cni_code(exc, name), exc.message, exc.kind) from exc


def install(app: web.Application, service: AttachmentService, domain: str = "cove") -> None:
    verbs = CniVerbs(service, domain)

    def route(path: str) -> Callable[[web.Request], Any]:
        fn = verbs.by_path[path]
        name = path.rsplit("/", 1)[1]

        async def handler(request: web.Request) -> web.Response:
            try:
                data = await json_body(request)
                out = await asyncio.to_thread(fn, data)
            except CoveError as exc:
                body = {**exc.to_json(), "cni_code": cni_code(exc, name)}
                return web.json_response(body, status=exc.http_status)
            return web.json_response(out, status=201 if name == "attach" else 200)

        return handler

    async def execute(request: web.Request) -> web.Response:
        environ = {
            name: request.headers[header]
            for header, name in ENV_HEADERS.items()
            if header in request.headers
        }
        raw = await request.read()
        rc, out = await asyncio.to_thread(plugin.execute, raw, environ, verbs.local_call)
        return web.Response(
            body=out.encode(), status=200 if rc == 0 else 422, content_type="application/json"
        )

    async def list_(request: web.Request) -> web.Response:
        network = request.query.get("network") or None
        node = request.query.get("node") or None
        atts = await asyncio.to_thread(service.list, network, node)
        return web.json_response([a.to_json() for a in atts])

    for path in verbs.by_path:
        app.router.add_post(path, route(path))
    app.router.add_post("/api/cni/exec", execute)
    app.router.add_get("/api/cni/attachments", list_)
