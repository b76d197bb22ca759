"""cove's HTTP server on a real loopback socket: keep-alive, pipelining,
chunked bodies both ways, 100-continue, limits, HEAD, errors, a departed
client, shutdown."""

from __future__ import annotations

import asyncio
import http.client
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

from cove.api import http as web

Check = Callable[[int, dict[str, object]], Awaitable[None]]


def serve(check: Check, *, max_body: int = 1024) -> None:
    """Run ``check(port, seen)`` against an app with a few routes."""
    seen: dict[str, object] = {"cancelled": 0, "cleaned": False}

    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        return web.Response(
            body=body,
            headers={
                "X-Match": repr(request.match_info),
                "X-Tags": ",".join(request.query.getall("tag", [])),
            },
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        for piece in (b"one ", b"two ", b"three"):
            await resp.write(piece)
        await resp.write_eof()
        return resp

    async def hang(request: web.Request) -> web.StreamResponse:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen["cancelled"] = int(seen["cancelled"]) + 1  # type: ignore[call-overload]
            raise
        return web.Response()

    async def boom(request: web.Request) -> web.StreamResponse:
        raise RuntimeError("handler bug")

    async def empty(request: web.Request) -> web.StreamResponse:
        return web.Response(status=204)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        yield
        seen["cleaned"] = True

    app = web.Application(client_max_size=max_body)
    app.router.add_put("/echo/{name}", echo)
    app.router.add_get("/echo/{name}", echo)
    app.router.add_get("/stream", stream)
    app.router.add_get("/hang", hang)
    app.router.add_get("/boom", boom)
    app.router.add_delete("/empty", empty)
    app.cleanup_ctx.append(lifecycle)

    async def go() -> None:
        server = web.HttpServer(app, shutdown_timeout=0.5)
        await server.setup()
        try:
            port = await server.start_tcp("127.0.0.1", 0)
            await check(port, seen)
        finally:
            await server.stop()
        assert seen["cleaned"] is True

    asyncio.run(go())


async def exchange(port: int, data: bytes, *, until_close: bool = True) -> bytes:
    """Send raw bytes; what comes back until the server closes (or 1 s of quiet)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 1.0 if not until_close else 10.0)
            if not chunk:
                break
            out += chunk
    except TimeoutError:
        pass
    writer.close()
    return out


def test_keep_alive_pipelining_and_path_decoding() -> None:
    async def check(port: int, seen: dict[str, object]) -> None:
        got = await exchange(
            port,
            b"PUT /echo/a%2Fb HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /echo/x?tag=1&tag=2 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /echo/last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        answers = got.split(b"HTTP/1.1 200 OK")
        assert len(answers) == 4, got  # three answers, in order, then closed
        assert b"X-Match: {'name': 'a/b'}" in answers[1] and answers[1].endswith(b"abc")
        assert b"X-Tags: 1,2" in answers[2]
        assert b"{'name': 'last'}" in answers[3] and b"Connection: close" in answers[3]

    serve(check)


def test_chunked_request_and_streamed_response_with_a_stdlib_client() -> None:
    async def check(port: int, seen: dict[str, object]) -> None:
        def client() -> tuple[bytes, bytes, str | None]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("PUT", "/echo/c", body=iter([b"hel", b"lo"]), encode_chunked=True)
            first = conn.getresponse().read()
            conn.request("GET", "/stream")  # same connection: keep-alive
            resp = conn.getresponse()
            streamed = resp.read()
            conn.close()
            return first, streamed, resp.getheader("Transfer-Encoding")

        first, streamed, te = await asyncio.to_thread(client)
        assert first == b"hello"
        assert streamed == b"one two three" and te == "chunked"

    serve(check)


def test_expect_continue_and_body_limit() -> None:
    async def check(port: int, seen: dict[str, object]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"PUT /echo/e HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line == b"HTTP/1.1 100 Continue\r\n"
        await reader.readline()
        writer.write(b"ok")
        answer = await asyncio.wait_for(reader.read(4096), 5)
        assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"\r\n\r\nok")
        writer.close()

        too_big = await exchange(
            port, b"PUT /echo/big HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"x" * 10
        )
        assert too_big.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in too_big

    serve(check)


def test_errors_head_and_no_content() -> None:
    async def check(port: int, seen: dict[str, object]) -> None:
        bad = await exchange(port, b"NONSENSE\r\n\r\n")
        assert bad.startswith(b"HTTP/1.1 400 ")
        # A handler's exception is a 500, and the connection stays usable.
        got = await exchange(
            port,
            b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
            b"DELETE /echo/x HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /echo/h HTTP/1.1\r\nHost: x\r\n\r\n"
            b"DELETE /empty HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        parts = got.split(b"HTTP/1.1 ")[1:]
        assert [p[:3] for p in parts] == [b"500", b"404", b"405", b"200", b"204"], got
        assert b"Allow: GET,HEAD,PUT" in parts[2]
        assert b"Content-Length: 0" in parts[3] and parts[3].endswith(b"\r\n\r\n")
        assert b"Content-Length" not in parts[4]
        old = await exchange(port, b"GET /echo/o HTTP/1.0\r\n\r\n")
        assert old.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in old

    serve(check)


def test_a_departed_client_cancels_its_handler() -> None:
    async def check(port: int, seen: dict[str, object]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while seen["cancelled"] != 1 and loop.time() < deadline:
            await asyncio.sleep(0.02)
        assert seen["cancelled"] == 1

    serve(check)


def test_stop_cancels_a_blocked_handler() -> None:
    holder: dict[str, object] = {}

    async def check(port: int, seen: dict[str, object]) -> None:
        holder["seen"] = seen
        busy = socket.create_connection(("127.0.0.1", port))
        busy.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        idle = socket.create_connection(("127.0.0.1", port))  # keep-alive, between requests
        idle.sendall(b"GET /echo/i HTTP/1.1\r\nHost: x\r\n\r\n")
        holder["socks"] = (busy, idle)
        await asyncio.sleep(0.2)

    serve(check)
    seen = holder["seen"]
    assert isinstance(seen, dict) and seen["cancelled"] == 1
    busy, idle = holder["socks"]  # type: ignore[misc]
    assert isinstance(busy, socket.socket) and isinstance(idle, socket.socket)
    for sock, before_close in ((busy, b""), (idle, b"HTTP/1.1 200 OK")):
        sock.settimeout(5)
        got = b""
        while chunk := sock.recv(4096):  # until the server closes it
            got += chunk
        assert got.startswith(before_close), got
        sock.close()
