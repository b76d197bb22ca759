"""cove's own small HTTP/1.1 server and handler toolkit.

The agent's APIs (the native /api routes and the Consul /v1 routes) run on
it. It does what those APIs need and no more: routing with path variables,
whole bodies up to a limit, keep-alive and pipelining, chunked bodies both
ways, ``Expect: 100-continue``, graceful shutdown. It costs a fraction of a
general framework per request (bench/registry: about 17 µs of server CPU for
an empty answer, against about 85 µs with aiohttp's server), which matters
for the registry's write rate.

Handlers look like aiohttp's::

    from cove.api import http as web

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"name": request.match_info["name"]})

    app = web.Application()
    app.router.add_get("/hello/{name}", hello)
    server = web.HttpServer(app)
    await server.setup()
    port = await server.start_tcp("127.0.0.1", 0)
    ...
    await server.stop()
"""

from cove.api.http.limits import ConnectionLimits, limits_for
from cove.api.http.listener import Listener, Transport
from cove.api.http.objects import Headers, Query, Request, Response, StreamResponse, json_response
from cove.api.http.routing import AppKey, Application, Handler, Screen, middleware
from cove.api.http.server import HttpServer
from cove.errors import HttpError

__all__ = [
    "AppKey",
    "Application",
    "ConnectionLimits",
    "Handler",
    "Headers",
    "HttpError",
    "HttpServer",
    "Listener",
    "Query",
    "Request",
    "Response",
    "Screen",
    "StreamResponse",
    "Transport",
    "json_response",
    "limits_for",
    "middleware",
]
