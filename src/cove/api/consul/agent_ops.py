"""/v1/agent/... for operating an agent: local service health for load
balancers, version, host, metrics, reload, leave, force-leave, the log
monitor, and /v1/agent/connect/... answered as not supported."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import time
from typing import Any

from cove.acl import Access
from cove.api import http as web
from cove.api.consul.common import authorize, consul_errors, ctx, options, reply, run, write
from cove.api.metrics import Series
from cove.errors import CoveError, InvalidArgument
from cove.registry import VERSION

# -- /v1/agent/health/service/... ----------------------------------------------

# Consul's HTTP codes for an aggregated status (agent/agent_endpoint.go,
# agentHealthService): load balancers probe these.
_CODES = {"passing": 200, "warning": 429, "critical": 503, "maintenance": 503}
_RANK = {"passing": 0, "warning": 1, "critical": 2, "maintenance": 3}
_MAINTENANCE = ("_service_maintenance:", "_node_maintenance")


def aggregate(checks: list[dict[str, Any]]) -> str:
    """Consul's AggregatedStatus: maintenance if a maintenance check is
    there, else the worst status (no checks: passing)."""
    worst = "passing"
    for c in checks:
        cid = str(c.get("CheckID", ""))
        status = "maintenance" if cid.startswith(_MAINTENANCE) else str(c.get("Status"))
        if _RANK.get(status, 2) > _RANK[worst]:
            worst = status if status in _RANK else "critical"
    return worst


def _wants_text(request: web.Request) -> bool:
    fmt = request.query.get("format", "")
    if fmt not in ("", "text", "json"):
        raise InvalidArgument(f"Invalid format {fmt!r}: expected text or json")
    return fmt == "text" or (not fmt and "text/plain" in request.headers.get("Accept", ""))


async def _service_infos(request: web.Request) -> tuple[dict[str, Any], dict[str, Any]]:
    c = ctx(request)
    node = c.registry.node_name
    services = await run(request, c.registry.queries.agent_services, node)
    checks = await run(request, c.registry.queries.agent_checks, node)
    return services, checks


def _info(service: dict[str, Any], checks: dict[str, Any]) -> dict[str, Any]:
    sid = service["ID"]
    mine = [
        {k: v for k, v in chk.items() if k not in ("CreateIndex", "ModifyIndex")}
        for chk in checks.values()
        if chk.get("ServiceID") in (sid, "")
    ]
    return {"AggregatedStatus": aggregate(mine), "Service": service, "Checks": mine}


@consul_errors
async def health_by_id(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    text = _wants_text(request)
    sid = request.match_info["id"]
    services, checks = await _service_infos(request)
    service = services.get(sid)
    if service is None:
        return web.Response(status=404, text=f"ServiceId {sid} not found")
    authz.need("service", service["Service"], Access.READ)
    info = _info(service, checks)
    status = info["AggregatedStatus"]
    if text:
        return web.Response(status=_CODES[status], text=status)
    return reply(info, status=_CODES[status])


@consul_errors
async def health_by_name(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    text = _wants_text(request)
    name = request.match_info["name"]
    authz.need("service", name, Access.READ)
    services, checks = await _service_infos(request)
    infos = [_info(s, checks) for s in services.values() if s["Service"] == name]
    if not infos:
        return web.Response(status=404, text=f"ServiceName {name} Not Found")
    status = max((i["AggregatedStatus"] for i in infos), key=_RANK.__getitem__)
    if text:
        return web.Response(status=_CODES[status], text=status)
    return reply(infos, status=_CODES[status])


# -- version, host, metrics ----------------------------------------------------------


@consul_errors
async def version(request: web.Request) -> web.Response:
    options(request)
    return reply(
        {
            "SKU": "oss",
            "ReleaseVersion": VERSION,
            "Revision": "cove",
            "BuildDate": "2023-11-01T00:00:00Z",
            "HumanVersion": f"{VERSION} (cove)",
            "FIPS": "",
        }
    )


@consul_errors
async def host(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    authz.need_scalar("operator", Access.READ)  # as Consul (AgentHost)
    return reply(await asyncio.to_thread(_host_info))


def _host_info() -> dict[str, Any]:
    """What Consul's /v1/agent/host reports (gopsutil's shapes), read from
    /proc and the standard library."""
    errors: list[str] = []
    mem: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                mem[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError) as exc:
        errors.append(f"memory: {exc}")
    total, available = mem.get("MemTotal", 0), mem.get("MemAvailable", 0)
    uptime = 0
    try:
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = int(float(f.read().split()[0]))
    except (OSError, ValueError, IndexError) as exc:
        errors.append(f"uptime: {exc}")
    disk: dict[str, Any] = {}
    try:
        du = shutil.disk_usage("/")
        disk = {
            "path": "/",
            "total": du.total,
            "free": du.free,
            "used": du.used,
            "usedPercent": 100.0 * du.used / du.total if du.total else 0.0,
        }
    except OSError as exc:
        errors.append(f"disk: {exc}")
    uname = os.uname()
    now = time.time()
    return {
        "Memory": {
            "total": total,
            "available": available,
            "used": total - available,
            "usedPercent": 100.0 * (total - available) / total if total else 0.0,
            "free": mem.get("MemFree", 0),
        },
        "CPU": [
            {"cpu": i, "modelName": platform.processor() or uname.machine, "cores": 1}
            for i in range(os.cpu_count() or 1)
        ],
        "Host": {
            "hostname": uname.nodename,
            "uptime": uptime,
            "bootTime": int(now) - uptime,
            "os": "linux",
            "platform": platform.system().lower(),
            "kernelVersion": uname.release,
            "kernelArch": uname.machine,
        },
        "Disk": disk,
        "CollectionTime": time.time_ns(),
        "Errors": errors or None,
    }


def _gauges(request: web.Request) -> list[tuple[str, float, dict[str, str]]]:
    """The agent's gauges: the registry as this agent sees it, and the
    agent's own samples (``cove.api.metrics``) when it serves them."""
    c = ctx(request)
    q = c.registry.queries
    node = c.registry.node_name
    services = q.agent_services(node)
    checks = q.agent_checks(node)
    by_status: dict[str, int] = dict.fromkeys(("passing", "warning", "critical"), 0)
    for chk in checks.values():
        status = str(chk.get("Status"))
        by_status[status] = by_status.get(status, 0) + 1
    gauges: list[tuple[str, float, dict[str, str]]] = [
        ("cove.agent.services", float(len(services)), {}),
        ("cove.catalog.nodes", float(len(q.nodes().data)), {}),
        ("cove.catalog.services", float(len(q.services().data)), {}),
        ("cove.store.revision", float(c.registry.store.revision), {}),
    ]
    for status, n in sorted(by_status.items()):
        gauges.append(("cove.agent.checks", float(n), {"status": status}))
    if c.samples is not None:
        for sample in c.samples():
            if isinstance(sample, Series):
                gauges.append((sample.name, sample.value, dict(sample.labels)))
            else:
                gauges.append((sample[0], float(sample[2]), {}))
    return gauges


@consul_errors
async def metrics(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    authz.need("agent", ctx(request).registry.node_name, Access.READ)
    fmt = request.query.get("format", "")
    if fmt not in ("", "prometheus"):
        raise InvalidArgument(f"Invalid format {fmt!r}: expected prometheus")
    # On a thread always: the agent's samples read the kernel (netlink),
    # which cannot run on the event loop's thread.
    gauges = await asyncio.to_thread(_gauges, request)
    if fmt == "prometheus" or "openmetrics" in request.headers.get("Accept", ""):
        lines: list[str] = []
        seen: set[str] = set()
        for name, value, labels in gauges:
            prom = name.replace(".", "_").replace("-", "_")
            if prom not in seen:
                seen.add(prom)
                lines += [f"# HELP {prom} {name}", f"# TYPE {prom} gauge"]
            label = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            lines.append(f"{prom}{{{label}}} {value:g}" if label else f"{prom} {value:g}")
        return web.Response(
            text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8"
        )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime())
    return reply(
        {
            "Timestamp": stamp,
            "Gauges": [{"Name": n, "Value": v, "Labels": labels} for n, v, labels in gauges],
            "Points": [],
            "Counters": [],
            "Samples": [],
        }
    )


# -- reload, leave, force-leave --------------------------------------------------------


@consul_errors
async def reload(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    c = ctx(request)
    authz.need("agent", c.registry.node_name, Access.WRITE)
    if c.reload is None:
        raise CoveError(
            "Reload failed: this cove agent has no reloadable configuration"
            " (send the agent SIGHUP to reload its TLS certificate)",
        )
    await c.reload()
    return web.Response(status=200)


@consul_errors
async def leave(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    c = ctx(request)
    authz.need("agent", c.registry.node_name, Access.WRITE)
    if c.leave is None:
        raise CoveError("Leave failed: this cove agent cannot be stopped through its API")
    await c.leave()
    return web.Response(status=200)


@consul_errors
async def force_leave(request: web.Request) -> web.Response:
    """Consul marks a failed member left (and with ?prune forgets it); cove
    removes a node that is not alive (its serfHealth lease ran out) from
    the catalog, and with ``?prune`` (in an agent) everything it owned, as
    ``cove members rm``. A live node stays, as in Consul, where it refutes."""
    authz = await authorize(request, options(request))
    authz.need_scalar("operator", Access.WRITE)  # Consul >= 1.11
    c = ctx(request)
    name = request.match_info["node"]
    member = await run(request, c.registry.queries.member, name)
    if "prune" in request.query and c.prune is not None:
        # Forgotten for good, as `cove members rm`: its containers,
        # addresses and endpoints too. A live node stays, as in Consul.
        if member is None or member["Status"] != 1:
            await c.prune(name)
        return web.Response(status=200)
    if member is None:
        raise CoveError(f"agent: No node found with name '{name}'")
    if member["Status"] != 1:
        await write(request, c.registry.catalog.catalog_deregister, {"Node": name})
    return web.Response(status=200)


# -- monitor -------------------------------------------------------------------------

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "err": logging.ERROR,
    "error": logging.ERROR,
}
_LEVEL_NAMES = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARN",
    logging.ERROR: "ERROR",
}
_MONITOR_QUEUE = 512  # lines held for a slow reader; past that they are dropped


class _QueueHandler(logging.Handler):
    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str], js: bool):
        super().__init__()
        self.base_level = logging.NOTSET  # the logger's own level, before any monitor
        self._loop = loop
        self._queue = queue
        self._json = js

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self._render(record)
            self._loop.call_soon_threadsafe(self._put, line)
        except RuntimeError:  # the loop closed: the monitor is gone
            pass

    def _put(self, line: str) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(line)

    def _render(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        stamp += f".{int(record.msecs):03d}Z"
        level = _LEVEL_NAMES.get(record.levelno, record.levelname)
        message = record.getMessage()
        if self._json:
            return json.dumps(
                {
                    "@level": level.lower(),
                    "@message": message,
                    "@module": record.name,
                    "@timestamp": stamp,
                }
            )
        return f"{stamp} [{level}]  {record.name}: {message}"


@consul_errors
async def monitor(request: web.Request) -> web.StreamResponse:
    authz = await authorize(request, options(request))
    authz.need("agent", ctx(request).registry.node_name, Access.READ)
    level_name = request.query.get("loglevel", "info").lower() or "info"
    if level_name not in _LEVELS:
        raise InvalidArgument(f"Unknown log level: {level_name}")
    queue: asyncio.Queue[str] = asyncio.Queue(_MONITOR_QUEUE)
    handler = _QueueHandler(asyncio.get_running_loop(), queue, _truthy(request, "logjson"))
    handler.setLevel(_LEVELS[level_name])
    logger = logging.getLogger("cove")
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await response.prepare(request)
    _attach(logger, handler)
    reclaimed = request.reclaimed()
    get: asyncio.Future[str] | None = None
    try:
        while not reclaimed.done():
            get = asyncio.ensure_future(queue.get())
            waits: set[asyncio.Future[Any]] = {get, reclaimed}
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                break
            await response.write((get.result() + "\n").encode())
    except (ConnectionError, RuntimeError):
        pass  # the client went away
    finally:
        if get is not None and not get.done():
            get.cancel()  # also when this handler is cancelled (connection lost)
        _detach(logger, handler)
    await response.write_eof()
    return response


def _monitors(logger: logging.Logger) -> list[_QueueHandler]:
    return [h for h in logger.handlers if isinstance(h, _QueueHandler)]


def _attach(logger: logging.Logger, handler: _QueueHandler) -> None:
    """Add a monitor; the logger lets through the lowest level any monitor
    asks for, and gets its own level back when the last one leaves."""
    if not _monitors(logger):
        handler.base_level = logger.level
    else:
        handler.base_level = _monitors(logger)[0].base_level
    logger.addHandler(handler)
    _relevel(logger, handler.base_level)


def _detach(logger: logging.Logger, handler: _QueueHandler) -> None:
    logger.removeHandler(handler)
    _relevel(logger, handler.base_level)


def _relevel(logger: logging.Logger, base: int) -> None:
    logger.setLevel(base)
    wanted = min((h.level for h in _monitors(logger)), default=None)
    if wanted is not None and logger.getEffectiveLevel() > wanted:
        logger.setLevel(wanted)


def _truthy(request: web.Request, name: str) -> bool:
    return request.query.get(name, "false").lower() in ("", "1", "true", "t", "yes")


# -- Connect -------------------------------------------------------------------------


@consul_errors
async def connect_unsupported(request: web.Request) -> web.Response:
    raise InvalidArgument(
        "Connect must be enabled in order to use this endpoint: cove does not implement"
        " Consul Connect (service mesh); cove's network policy governs traffic between"
        " services"
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/agent/health/service/id/{id}", health_by_id)
    r.add_get("/v1/agent/health/service/name/{name}", health_by_name)
    r.add_get("/v1/agent/version", version)
    r.add_get("/v1/agent/host", host)
    r.add_get("/v1/agent/metrics", metrics)
    r.add_put("/v1/agent/reload", reload)
    r.add_put("/v1/agent/leave", leave)
    r.add_put("/v1/agent/force-leave/{node}", force_leave)
    r.add_get("/v1/agent/monitor", monitor)
    for method in ("GET", "PUT", "POST", "DELETE"):
        r.add_route(method, "/v1/agent/connect/{rest:.*}", connect_unsupported)
        r.add_route(method, "/v1/connect/{rest:.*}", connect_unsupported)
