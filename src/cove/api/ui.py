"""The web UI: its static files at ``/ui/`` (``/`` redirects there, as
Consul's agent does) and the read-mostly projection of the native objects it
shows, on ``/v1/cove/...``.

Authorization is the API's own, never a way around it:

- The UI's services, checks and KV views use the Consul routes (``/v1/...``),
  which follow the ACL system: the browser sends the token the user typed
  (kept in ``sessionStorage``) as ``X-Consul-Token``.
- ``/v1/cove/topology``, ``/v1/cove/containers[/{name}]`` and
  ``/v1/cove/events`` need ``operator:read``. With ACLs off every token has
  it, as on Consul's ``/v1/operator`` routes; what they show leaves out what
  only root should see (container environment, log and namespace paths).
- A container's logs (``/v1/cove/containers/{name}/logs``) and the actions
  (``POST .../stop``, ``.../start``, ``DELETE ...``) are native-API powers:
  on TCP they need ACLs on and a token with ``operator:read`` (logs) or
  ``operator:write`` (actions); with ACLs off they are refused on TCP and
  left to the Unix socket, like ``/api``.
- Every TCP request has passed the guard first (``Host`` names the agent,
  cross-site writes refused), and the pages are sent with a
  Content-Security-Policy that allows only the agent's own scripts and no
  framing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cove.acl.authorizer import Authorizer
from cove.acl.rules import Access
from cove.acl.service import AclService
from cove.api import events as events_api
from cove.api import http as web
from cove.api.containers import container_json, send_log
from cove.api.guard import request_token
from cove.api.http import Transport
from cove.errors import NotFound, PermissionDenied
from cove.events.change import Change, Kind
from cove.events.log import EventLog
from cove.lb.vips import VipService
from cove.network.service import NetworkService
from cove.policy.service import PolicyService
from cove.runtime.logfile import LogCursor, LogQuery
from cove.runtime.service import ContainerService
from cove.runtime.state import Status

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_LOG_TAIL = 64 * 1024
_LOG_POLL = 0.5
_HIDDEN = ("env", "log_path", "netns")  # root's business, not the UI's


@dataclass(frozen=True, slots=True)
class UiSources:
    """The services the UI's projection reads from and acts through."""

    acl: AclService
    events: EventLog
    networks: NetworkService
    containers: ContainerService
    vips: VipService
    policy: PolicyService


def install_static(app: web.Application, files: Mapping[str, bytes]) -> None:
    """Serve ``files`` (name -> content, ``index.html`` among them) at
    ``/ui/<name>``; ``/`` and ``/ui`` redirect to ``/ui/``."""

    def page(name: str) -> web.Response:
        body = files.get(name)
        if body is None:
            raise NotFound(f"no UI file {name[:80]!r}: the UI starts at /ui/")
        ext = name[name.rfind(".") :] if "." in name else ""
        return web.Response(
            body=body,
            headers=_SECURITY_HEADERS,
            content_type=_TYPES.get(ext, "application/octet-stream"),
        )

    async def index(_: web.Request) -> web.Response:
        return page("index.html")

    async def asset(request: web.Request) -> web.Response:
        return page(request.match_info["file"])

    async def to_ui(_: web.Request) -> web.Response:
        return web.Response(status=301, headers={"Location": "/ui/"})

    r = app.router
    r.add_get("/", to_ui)
    r.add_get("/ui", to_ui)
    r.add_get("/ui/", index)
    r.add_get("/ui/{file}", asset)


def _project(view_json: dict[str, Any]) -> dict[str, Any]:
    for key in _HIDDEN:
        view_json.pop(key, None)
    return view_json


def install(app: web.Application, src: UiSources) -> None:
    """The ``/v1/cove`` projection (see the module docstring)."""

    async def authorizer(request: web.Request) -> Authorizer:
        return await asyncio.to_thread(src.acl.resolve, request_token(request) or "")

    async def need_operator_read(request: web.Request) -> Authorizer:
        authz = await authorizer(request)
        if not authz.scalar("operator", Access.READ):
            raise authz.denied("operator:read")
        return authz

    def need_native(request: web.Request, write: bool) -> None:
        if request.listener.transport is Transport.UNIX:
            return
        if src.acl.allows_operator(request_token(request), write):
            return
        level = "write" if write else "read"
        if not src.acl.enabled:
            raise PermissionDenied(
                f"this needs operator:{level}, and with ACLs off the agent grants it on the "
                "Unix socket only: use the cove command there, or enable ACLs (--acl-enabled) "
                f"and sign in to the UI with a token granting operator:{level}"
            )
        raise PermissionDenied(
            f"Permission denied: this needs a token with operator:{level}; "
            "sign in to the UI with one (X-Consul-Token)"
        )

    def topology() -> dict[str, Any]:
        index = src.events.head
        nets = []
        for net in src.networks.list():
            body = net.to_json()
            body["endpoints"] = [
                {k: v for k, v in ep.to_json().items() if k != "netns"}
                for ep in src.networks.endpoints(net.name)
            ]
            nets.append(body)
        return {
            "index": index,
            "networks": nets,
            "containers": [_project(container_json(v)) for v in src.containers.list_all(True)],
            "vips": [v.to_json() for v in src.vips.list()],
            "rules": [r.to_json() for r in src.policy.rules()],
        }

    async def get_topology(request: web.Request) -> web.Response:
        await need_operator_read(request)
        body = await asyncio.to_thread(topology)
        return _reply(body, body["index"])

    async def list_containers(request: web.Request) -> web.Response:
        await need_operator_read(request)
        views = await asyncio.to_thread(src.containers.list_all, True)
        return _reply([_project(container_json(v)) for v in views], src.events.head)

    async def inspect(request: web.Request) -> web.Response:
        await need_operator_read(request)
        view = await asyncio.to_thread(src.containers.inspect, request.match_info["name"])
        return _reply(_project(container_json(view)), src.events.head)

    async def act(request: web.Request, action: Callable[[str], Any]) -> web.Response:
        need_native(request, write=True)
        name = request.match_info["name"]
        result = await asyncio.to_thread(action, name)
        if result is None:
            return web.json_response({"removed": name})
        return web.json_response(_project(container_json(result)))

    async def stop(request: web.Request) -> web.Response:
        return await act(request, lambda n: src.containers.stop(n, 10.0))

    async def start(request: web.Request) -> web.Response:
        return await act(request, src.containers.start)

    async def remove(request: web.Request) -> web.Response:
        force = request.query.get("force", "") in ("1", "true")
        return await act(request, lambda n: src.containers.remove(n, force))

    async def logs(request: web.Request) -> web.StreamResponse:
        need_native(request, write=False)
        name = request.match_info["name"]
        info = await asyncio.to_thread(src.containers.inspect, name)
        follow = request.query.get("follow", "") in ("1", "true")
        resp = web.StreamResponse(
            headers={"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        try:
            f = open(info.log_path, "rb")  # noqa: SIM115 - closed below, across awaits
        except FileNotFoundError:
            await resp.write_eof()
            return resp
        cursor = LogCursor(f, LogQuery())  # the records as text, both streams
        try:
            await asyncio.to_thread(cursor.start_near_end, _LOG_TAIL)
            reclaimed = request.reclaimed()
            while True:
                await send_log(resp, cursor, mux=False)
                if not follow or reclaimed.done():
                    break
                try:
                    status = (await asyncio.to_thread(src.containers.inspect, name)).state.status
                except NotFound:
                    break
                if status not in (Status.RUNNING, Status.RESTARTING):
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reclaimed), _LOG_POLL)
        finally:
            f.close()
        await resp.write_eof()
        return resp

    async def events(request: web.Request) -> web.StreamResponse:
        await need_operator_read(request)
        secret = request_token(request) or ""

        async def authorize() -> Callable[[Change], bool] | None:
            # Again before each batch: a deleted token or a policy that no
            # longer grants operator:read ends the stream.
            authz = src.acl.cached(secret)
            if authz is None:
                try:
                    authz = await asyncio.to_thread(src.acl.resolve, secret)
                except PermissionDenied:
                    return None
            if not authz.scalar("operator", Access.READ):
                return None
            return _visible_to(authz)

        return await events_api.serve(request, src.events, authorize)

    r = app.router
    r.add_get("/v1/cove/topology", get_topology)
    r.add_get("/v1/cove/containers", list_containers)
    r.add_get("/v1/cove/containers/{name}", inspect)
    r.add_get("/v1/cove/containers/{name}/logs", logs)
    r.add_post("/v1/cove/containers/{name}/stop", stop)
    r.add_post("/v1/cove/containers/{name}/start", start)
    r.add_delete("/v1/cove/containers/{name}", remove)
    r.add_get("/v1/cove/events", events)


def _reply(body: Any, index: int) -> web.Response:
    resp = web.json_response(body)
    resp.headers["X-Consul-Index"] = str(index)
    return resp


def _visible_to(authz: Authorizer) -> Callable[[Change], bool]:
    """Which changes a token may see: registry objects by their own ACL
    resource (as ``/v1`` shows them), the rest by operator:read (already
    checked for the stream)."""

    def visible(change: Change) -> bool:
        kind = change.kind
        if kind is Kind.SERVICE:
            return authz.allowed("service", change.name, Access.READ)
        if kind is Kind.CHECK:
            service = change.attrs.get("service")
            if service:
                return authz.allowed("service", service, Access.READ)
            return authz.allowed("node", change.attrs.get("node", ""), Access.READ)
        if kind is Kind.NODE:
            return authz.allowed("node", change.name, Access.READ)
        if kind is Kind.KV:
            return authz.allowed("key", change.name, Access.READ)
        return True

    return visible
