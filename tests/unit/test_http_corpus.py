"""The attacker's corpus against cove's HTTP framing: each request is
malformed in a way lenient parsers accept (issue 10), and each must get a
clean 400 from a real server, never a dropped connection or a handler call."""

from __future__ import annotations

import asyncio

import pytest

from cove.api import http as web

CORPUS = {
    "superscript two as Content-Length": (
        b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: \xc2\xb2\r\n\r\nab"
    ),
    "bare LF inside the headers": b"GET /echo HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n",
    "vertical tab after chunked": (
        b"PUT /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\x0b\r\n\r\n"
        b"1\r\na\r\n0\r\n\r\n"
    ),
    "underscore in a chunk size": (
        b"PUT /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1_0\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n"
    ),
    "control byte in a header name": b"GET /echo HTTP/1.1\r\nHost: x\r\nX-\x01A: b\r\n\r\n",
    "DEL in a header name": b"GET /echo HTTP/1.1\r\nHost: x\r\nX\x7fA: b\r\n\r\n",
    "NUL in a header value": b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: b\x00c\r\n\r\n",
    "control byte in the path": b"GET /ec\x01ho HTTP/1.1\r\nHost: x\r\n\r\n",
    "tab in the path": b"GET /ec\tho HTTP/1.1\r\nHost: x\r\n\r\n",
    "DEL in the path": b"GET /ec\x7fho HTTP/1.1\r\nHost: x\r\n\r\n",
    "negative Content-Length": b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "plus-signed Content-Length": b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\na",
    "two Content-Lengths": (
        b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na"
    ),
    "Content-Length and chunked": (
        b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "hex prefix in a chunk size": (
        b"PUT /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x1\r\na\r\n0\r\n\r\n"
    ),
    "space before the colon": b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n",
    "obsolete line folding": b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n",
    "bare CR in a header value": b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: b\rc\r\n\r\n",
    "two Host headers": b"GET /echo HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
}


async def _exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = b""
    while True:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        if not chunk:
            break
        out += chunk
    writer.close()
    return out


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_malformed_request_gets_a_clean_400_and_no_handler_runs(name: str) -> None:
    calls: list[str] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        calls.append(request.raw_path)
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_get("/echo", echo)
    app.router.add_put("/echo", echo)

    async def go() -> bytes:
        server = web.HttpServer(app, shutdown_timeout=0.5)
        await server.setup()
        try:
            port = await server.start_tcp("127.0.0.1", 0)
            return await _exchange(port, CORPUS[name])
        finally:
            await server.stop()

    answer = asyncio.run(go())
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    assert b"Connection: close" in answer
    assert calls == []
