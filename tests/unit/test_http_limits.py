"""Connection caps of cove's HTTP server on real sockets: beyond a cap a
client is answered 503 with Retry-After, a freed slot admits the next one,
each client address has its own share, the Unix socket its own budget, and
parked handlers answer early when the server is short of connections."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Awaitable, Callable

import pytest

from cove.api import http as web
from cove.errors import InvalidArgument

Check = Callable[[int, str], Awaitable[None]]


def serve(check: Check, limits: web.ConnectionLimits) -> None:
    async def hello(request: web.Request) -> web.StreamResponse:
        return web.Response(text="hello")

    async def park(request: web.Request) -> web.StreamResponse:
        # As a blocking query: waits long unless the server wants the
        # connection back.
        try:
            await asyncio.wait_for(asyncio.shield(request.reclaimed()), 30)
        except TimeoutError:
            return web.Response(text="waited out")
        return web.Response(text="reclaimed")

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/park", park)

    async def go() -> None:
        server = web.HttpServer(app, shutdown_timeout=0.5, limits=limits)
        await server.setup()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "sock")
            try:
                port = await server.start_tcp("127.0.0.1", 0)
                await server.start_unix(path)
                await check(port, path)
            finally:
                await server.stop()

    asyncio.run(go())


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(port: int, source: str = "127.0.0.1") -> Conn:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def ask(conn: Conn, path: str = "/hello") -> bytes:
    """One request; the answer (head and body) or what came before a close."""
    reader, writer = conn
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    return await read_answer(reader)


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    except asyncio.IncompleteReadError as exc:
        return exc.partial
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


async def refused_at_once(conn: Conn) -> bytes:
    """What a refused connection is told, unasked, before it is closed."""
    return await asyncio.wait_for(conn[0].read(), 5)


def test_sizing_keeps_a_reserve_below_the_open_file_limit() -> None:
    caps = web.limits_for(1024)
    assert caps.tcp_total == 576  # three quarters of 1024 less a reserve of 256
    assert caps.tcp_per_client == 200  # Consul's default
    assert caps.unix_total == 128
    assert caps.tcp_total + caps.unix_total < 1024 - 200
    big = web.limits_for(1 << 20)
    assert big.tcp_total == 589_824 and big.unix_total == 131_072
    # A setting above what the limit allows is lowered to it; 0 is no cap.
    assert web.limits_for(1024, max_conns=5000).tcp_total == 576
    assert web.limits_for(1024, max_conns=50, per_client=0) == web.ConnectionLimits(
        tcp_total=50, tcp_per_client=0, unix_total=128
    )
    assert web.limits_for(1024, max_conns=50).tcp_per_client == 50
    with pytest.raises(InvalidArgument):
        web.limits_for(1024, per_client=-1)


def test_beyond_the_total_cap_a_client_is_told_to_retry_later() -> None:
    async def check(port: int, path: str) -> None:
        first, second = await connect(port), await connect(port)
        assert b"hello" in await ask(first)
        assert b"hello" in await ask(second)
        third = await connect(port)
        answer = await refused_at_once(third)
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"\r\nRetry-After: 7\r\n" in answer and b"Connection: close" in answer
        third[1].close()
        # A slot freed by a client that leaves admits the next one.
        first[1].close()
        await asyncio.sleep(0.1)
        fourth = await connect(port)
        assert b"hello" in await ask(fourth)
        for conn in (second, fourth):
            conn[1].close()

    serve(check, web.ConnectionLimits(tcp_total=2, tcp_per_client=0, unix_total=2, retry_after=7))


def test_each_client_address_has_its_own_share() -> None:
    async def check(port: int, path: str) -> None:
        mine = [await connect(port) for _ in range(2)]
        for conn in mine:
            assert b"hello" in await ask(conn)
        extra = await connect(port)
        assert (await refused_at_once(extra)).startswith(b"HTTP/1.1 503")
        other = await connect(port, "127.0.0.2")  # another client is not held back
        assert b"hello" in await ask(other)
        for conn in (*mine, extra, other):
            conn[1].close()

    serve(check, web.ConnectionLimits(tcp_total=10, tcp_per_client=2, unix_total=2))


def test_tcp_load_never_refuses_the_unix_socket() -> None:
    async def check(port: int, path: str) -> None:
        tcp = [await connect(port) for _ in range(2)]
        assert (await refused_at_once(await connect(port))).startswith(b"HTTP/1.1 503")
        local = [await asyncio.open_unix_connection(path) for _ in range(2)]
        for conn in local:
            assert b"hello" in await ask(conn)
        # The socket has a budget too, which TCP does not share.
        over = await asyncio.open_unix_connection(path)
        assert (await refused_at_once(over)).startswith(b"HTTP/1.1 503")
        for conn in (*tcp, *local, over):
            conn[1].close()

    serve(check, web.ConnectionLimits(tcp_total=2, tcp_per_client=0, unix_total=2))


def test_parked_handlers_answer_early_when_the_cap_is_reached() -> None:
    async def check(port: int, path: str) -> None:
        parked = [await connect(port) for _ in range(2)]
        for _, writer in parked:
            writer.write(b"GET /park HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
        await asyncio.sleep(0.2)
        other = await connect(port, "127.0.0.2")  # beyond this client's share only
        assert b"hello" in await ask(other)
        first = await connect(port)  # beyond the cap: refused, and it reclaims
        assert (await refused_at_once(first)).startswith(b"HTTP/1.1 503")
        for reader, _ in parked:
            answer = await read_answer(reader)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"reclaimed")
            assert b"Connection: close" in answer
            assert await asyncio.wait_for(reader.read(), 5) == b""  # handed back
        await asyncio.sleep(0.1)
        again = await connect(port)
        assert b"hello" in await ask(again)
        for conn in (*parked, other, first, again):
            conn[1].close()

    serve(check, web.ConnectionLimits(tcp_total=10, tcp_per_client=2, unix_total=2))


def test_a_request_pipelined_behind_a_parked_one_ends_the_wait() -> None:
    async def check(port: int, path: str) -> None:
        reader, writer = await connect(port)
        writer.write(b"GET /park HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        first = await read_answer(reader)
        assert first.endswith(b"reclaimed") and b"Connection: close" not in first
        assert (await read_answer(reader)).endswith(b"hello")  # same connection, in order
        writer.close()

    serve(check, web.ConnectionLimits(tcp_total=10, tcp_per_client=2, unix_total=2))
