"""The HTTP application: error mapping and the native /api routes' plumbing.

One aiohttp app is served on the Unix socket (the CLI) and on TCP (clients).
Domain modules add their routes with ``install(app, ...)`` functions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from cove.api import http as web
from cove.errors import CoveError, InvalidArgument

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except CoveError as exc:
        if exc.http_status >= 500:
            log.error("%s %s failed: %s", request.method, request.path, exc.message)
        return web.json_response(exc.to_json(), status=exc.http_status)


def build_app() -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=8 * 1024 * 1024)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/api/health", health)
    return app


async def json_body(request: web.Request) -> Any:
    """The request body as JSON; ``InvalidArgument`` when it is not."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"request body is not valid JSON: {exc}") from exc


def query_bool(request: web.Request, name: str) -> bool:
    value = request.query.get(name)
    if value is None:
        return False
    return value.lower() not in ("0", "false", "no")
