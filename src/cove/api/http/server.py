"""An HTTP/1.1 server for an ``Application``, on TCP and Unix sockets.

One asyncio protocol per connection: it frames requests as their bytes
arrive (``message``), reads each body whole (up to the app's size limit) and
runs the requests of a connection one after another on one task, so
pipelined answers leave in order. A connection stays open between requests
(keep-alive) unless the client asks to close, speaks HTTP/1.0 without
keep-alive, or sends something malformed (answered, then closed). A client
that goes away cancels the handler it was waiting for, so a blocking query
of a departed client does not wait out its time.

Connections are capped (``limits``): TCP and TLS in total and per client
address, the Unix socket on a budget of its own. One beyond a cap is
answered 503 with ``Retry-After`` and closed; and since a parked blocking
query holds its connection for up to ten minutes, the refusal also asks the
parked handlers in the refused scope (that client, or all TCP) to answer now
(``Request.reclaimed``), closing their connections after the answer. A
request pipelined behind a parked one also ends the park (answers leave in
order, so it would wait as long), keeping the connection.

Bodies are bounded per connection, pipelined ones included: once the bodies
queued or being answered on a connection reach one body limit, the server
stops reading it until they are answered, so a connection holds about one
body limit (plus one read) whatever it pipelines.

``stop()`` stops listening, closes idle connections, gives requests in flight
``shutdown_timeout`` seconds, cancels what is left and then finishes the
app's cleanup contexts.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import cast

from cove.api.http.limits import NO_LIMITS, ConnectionLimits
from cove.api.http.listener import Listener, Transport
from cove.api.http.message import RequestParser
from cove.api.http.objects import Headers, Request, Response
from cove.api.http.routing import Application
from cove.errors import HttpError

log = logging.getLogger(__name__)

MAX_PIPELINE = 16  # parsed requests queued on a connection before reading pauses
PEER_CHECK = 1.0  # seconds between looks at a paused connection's peer
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_PEER_GONE = (7, 8)  # TCP_CLOSE, TCP_CLOSE_WAIT: the client closed or reset


class HttpServer:
    """Serves ``app`` on any number of listeners (see the module docstring)."""

    def __init__(
        self,
        app: Application,
        *,
        shutdown_timeout: float = 2.0,
        keepalive_timeout: float = 75.0,
        limits: ConnectionLimits = NO_LIMITS,
    ) -> None:
        self.app = app
        self.shutdown_timeout = shutdown_timeout
        self.keepalive_timeout = keepalive_timeout
        self.limits = limits
        self.connections: set[_Connection] = set()
        self.refused = 0  # connections answered 503 for a cap
        self.reclaimed = 0  # parked handlers asked to answer early
        self._tcp = 0
        self._unix = 0
        self._per_client: dict[str, int] = {}
        self.parked: set[_Connection] = set()  # handlers waiting on ``reclaimed``
        self._listeners: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._date: tuple[int, str] = (0, "")
        self._started = False

    async def setup(self) -> None:
        """Start the app's cleanup contexts; call before listening."""
        await self.app.startup()
        self._started = True
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def start_tcp(
        self,
        host: str,
        port: int,
        *,
        reuse_address: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> int:
        """Listen on ``host:port`` (0: any free port), with TLS when given a
        context; the bound port."""
        loop = asyncio.get_running_loop()
        transport = Transport.TLS if ssl_context is not None else Transport.TCP
        listener = [Listener(transport, host, port)]
        server = await loop.create_server(
            lambda: _Connection(self, listener[0]),
            host,
            port,
            reuse_address=reuse_address,
            ssl=ssl_context,
        )
        self._listeners.append(server)
        sockets = server.sockets or ()
        bound = int(sockets[0].getsockname()[1]) if sockets else port
        listener[0] = Listener(transport, host, bound)
        return bound

    async def start_unix(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        listener = Listener(Transport.UNIX, path=path)
        self._listeners.append(
            await loop.create_unix_server(lambda: _Connection(self, listener), path)
        )

    async def stop(self) -> None:
        for server in self._listeners:
            server.close()
        self._listeners.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_timeout
        while any(not c.idle for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()
        await asyncio.sleep(0)  # let cancelled handlers unwind
        if self._started:
            self._started = False
            await self.app.cleanup()

    def admit(self, conn: _Connection) -> bool:
        """Count ``conn`` in, or refuse it (False) when it would pass a cap;
        a refusal reclaims the parked connections of the refused scope."""
        limits = self.limits
        if conn.unix:
            if limits.unix_total and self._unix >= limits.unix_total:
                self._refuse(lambda c: c.unix)
                return False
            self._unix += 1
            return True
        client = conn.client
        held = self._per_client.get(client, 0)
        if limits.tcp_per_client and held >= limits.tcp_per_client:
            self._refuse(lambda c: c.client == client)
            return False
        if limits.tcp_total and self._tcp >= limits.tcp_total:
            self._refuse(lambda c: not c.unix)
            return False
        self._tcp += 1
        self._per_client[client] = held + 1
        return True

    def release(self, conn: _Connection) -> None:
        """``conn`` (admitted) has closed."""
        if conn.unix:
            self._unix -= 1
            return
        self._tcp -= 1
        left = self._per_client[conn.client] - 1
        if left:
            self._per_client[conn.client] = left
        else:
            del self._per_client[conn.client]

    def _refuse(self, scope: Callable[[_Connection], bool]) -> None:
        self.refused += 1
        for conn in [c for c in self.parked if scope(c)]:
            if conn.reclaim():
                self.reclaimed += 1

    def date(self) -> str:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True))
        return self._date[1]

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(15.0, self.keepalive_timeout))
            cutoff = loop.time() - self.keepalive_timeout
            for conn in list(self.connections):
                if conn.idle and conn.last_active < cutoff:
                    conn.close()


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer, listener: Listener) -> None:
        self._server = server
        self._app = server.app
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = RequestParser(server.app.client_max_size)
        self._queue: deque[Request | HttpError] = deque()
        self._task: asyncio.Task[None] | None = None
        self._parsing = True
        self._reading_paused = False
        self._lost = False
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self._chunked_ok = True
        self._held = 0  # body bytes queued or being answered
        self._admitted = False
        self._reclaim: asyncio.Future[None] | None = None
        self._reclaimed = False
        self._peer_timer: asyncio.TimerHandle | None = None
        self.unix = listener.transport is Transport.UNIX
        self.client = ""  # the peer's address (TCP, TLS)
        self.last_active = self._loop.time()

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self._transport = cast(asyncio.Transport, transport)
        if not self.unix:
            peer = transport.get_extra_info("peername")
            self.client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self._server.admit(self):
            # Answered before reading anything and closed at once: its
            # descriptor goes straight back to the process.
            self._parsing = False
            self._write(self._refusal_bytes())
            self._transport.close()
            return
        self._admitted = True
        self._server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if not self._parsing:
            return
        parser = self._parser
        parser.feed(data)
        out = parser.out
        queue = self._queue
        app = self._app
        while out:
            item = out.popleft()
            if isinstance(item, HttpError):
                queue.append(item)
                continue
            self._held += len(item.body)
            queue.append(
                Request(
                    item.method,
                    item.target,
                    item.version,
                    Headers(item.headers),
                    item.body,
                    app,
                    self,
                    item.keep_alive,
                    self._listener,
                )
            )
        if parser.done:
            self._parsing = False
        elif parser.wants_continue():
            self._write(_CONTINUE)
        if queue:
            if self._task is None:
                self._task = self._loop.create_task(self._run())
            elif self._reclaim is not None:
                # Answers leave in order: a request pipelined behind a parked
                # one (and its body) would wait out the park, minutes.
                self._end_park()
        # Bytes count, not only requests: while a body is queued or being
        # answered, the next one is not read past one body limit in all.
        if (
            not self._reading_paused
            and self._transport is not None
            and (
                len(queue) >= MAX_PIPELINE
                or (self._held and self._held + parser.buffered >= self._app.client_max_size)
            )
        ):
            self._transport.pause_reading()
            self._reading_paused = True
            if not self.unix and self._peer_timer is None:
                self._peer_timer = self._loop.call_later(PEER_CHECK, self._watch_peer)

    def eof_received(self) -> bool:
        # A client that stops sending has gone (as aiohttp treats it): the
        # transport closes and connection_lost cancels a running handler.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._parsing = False
        if self._admitted:
            self._admitted = False
            self._server.release(self)
        self._server.connections.discard(self)
        self._server.parked.discard(self)
        # Their bodies go now, not when the collector finds the cycles
        # (the connection, its requests and its parser refer to each other).
        self._queue.clear()
        self._parser.close()
        if self._peer_timer is not None:
            self._peer_timer.cancel()
            self._peer_timer = None
        if self._task is not None:
            self._task.cancel()
        self._wake_writer()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    # -- state for the server ------------------------------------------------

    @property
    def idle(self) -> bool:
        return self._task is None and not self._queue

    def _watch_peer(self) -> None:
        # A paused transport reads nothing, so it would not see its client
        # leave; the bodies it holds would wait for the handler ahead of
        # them (a blocking query: minutes). The kernel knows.
        self._peer_timer = None
        if not self._reading_paused or self._lost or self._transport is None:
            return
        sock = self._transport.get_extra_info("socket")
        try:
            state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
        except (AttributeError, OSError):
            return
        if state in _PEER_GONE:
            self.abort()
            return
        self._peer_timer = self._loop.call_later(PEER_CHECK, self._watch_peer)

    def reclaimed(self) -> asyncio.Future[None]:
        """Done when the server, short of connections, wants this one back:
        a handler that waits long answers at once (see ``Request``)."""
        if self._reclaim is None:
            self._reclaim = self._loop.create_future()
            if self._reclaimed or self._queue:
                self._reclaim.set_result(None)
            elif not self._lost:
                self._server.parked.add(self)
        return self._reclaim

    def reclaim(self) -> bool:
        """Ask a handler waiting on ``reclaimed`` to answer now; the
        connection closes after that answer. Whether one was waiting."""
        fut = self._reclaim
        if fut is None or fut.done():
            return False
        self._reclaimed = True
        self._end_park()
        return True

    def _end_park(self) -> None:
        fut = self._reclaim
        if fut is not None and not fut.done():
            fut.set_result(None)
        self._server.parked.discard(self)

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._transport is not None:
            self._transport.abort()

    # -- answering -------------------------------------------------------------

    async def _run(self) -> None:
        queue = self._queue
        try:
            while queue:
                item = queue.popleft()
                if isinstance(item, HttpError):
                    self._write(self._error_bytes(item))
                    self.close()
                    return
                keep = await self._answer(item)
                self._held -= item.body_size
                if self._reclaim is not None:
                    self._reclaim = None
                    self._server.parked.discard(self)
                if not keep or self._reclaimed:
                    self.close()
                    return
                del item  # its body is not kept while the next one waits
                if self._reading_paused:
                    self._maybe_resume()
                if self._write_paused:
                    await self._drained()
        except (asyncio.CancelledError, ConnectionError):
            return  # the client went away
        finally:
            self._task = None
            self.last_active = self._loop.time()

    def _maybe_resume(self) -> None:
        if len(self._queue) >= MAX_PIPELINE // 2 or (
            self._held and self._held + self._parser.buffered >= self._app.client_max_size
        ):
            return
        self._reading_paused = False
        if self._transport is not None:
            self._transport.resume_reading()

    async def _answer(self, request: Request) -> bool:
        """Run the handler and send its answer; whether to keep the
        connection open."""
        self._chunked_ok = request.version >= (1, 1)
        try:
            resp = await self._app.handle(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.raw_path)
            resp = Response(status=500, text="500 Internal Server Error")
        keep = request.keep_alive and not self._reclaimed
        if isinstance(resp, Response) and not resp.prepared:
            headers = resp.headers
            headers["Date"] = self._server.date()
            if not keep:
                headers["Connection"] = "close"
            elif request.version < (1, 1):
                headers["Connection"] = "keep-alive"
            try:
                data = resp.render(head_only=request.method == "HEAD")
            except ValueError:
                log.exception("%s %s: a malformed response", request.method, request.raw_path)
                data = Response(status=500, text="500 Internal Server Error").render()
            self._write(data)
            return keep
        if not resp.prepared:
            await resp.prepare(request)
        await resp.write_eof()
        return keep and self._chunked_ok

    def _refusal_bytes(self) -> bytes:
        retry = self._server.limits.retry_after
        resp = Response(
            status=503,
            text=f"Too many connections; retry in {retry} seconds",
            headers={"Retry-After": str(retry)},
        )
        resp.headers["Date"] = self._server.date()
        resp.headers["Connection"] = "close"
        return resp.render()

    def _error_bytes(self, error: HttpError) -> bytes:
        resp = Response(status=error.status, text=error.message)
        resp.headers["Date"] = self._server.date()
        resp.headers["Connection"] = "close"
        return resp.render()

    # -- writing (also the Channel of streamed responses) -------------------------

    @property
    def chunked_ok(self) -> bool:
        return self._chunked_ok

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def send_head(self, head: bytes) -> None:
        if self._lost:
            raise ConnectionResetError("the client closed the connection")
        self._write(head)

    async def send_body(self, data: bytes) -> None:
        if self._lost:
            raise ConnectionResetError("the client closed the connection")
        self._write(data)
        if self._write_paused:
            await self._drained()

    async def _drained(self) -> None:
        while self._write_paused and not self._lost:
            self._drain = self._loop.create_future()
            await self._drain
        if self._lost:
            raise ConnectionResetError("the client closed the connection")

    def _wake_writer(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None
