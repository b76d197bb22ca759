"""Request framing and routing of cove's HTTP server (pure logic)."""

from __future__ import annotations

import asyncio

import pytest

from cove.api import http as web
from cove.api.http.message import ChunkedBody, HttpError, parse_head


def test_head_is_parsed_with_lowercased_repeated_headers() -> None:
    head = parse_head(
        b"PUT /v1/kv/a%2Fb?cas=3 HTTP/1.1\r\nHost: x\r\nX-Tag: a\r\nx-tag: b\r\nContent-Length: 5"
    )
    assert (head.method, head.target, head.version) == ("PUT", "/v1/kv/a%2Fb?cas=3", (1, 1))
    assert head.headers["x-tag"] == "a, b"
    assert head.length == 5 and not head.chunked and head.keep_alive


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /\r\nHost: x", 400),  # no version
        (b"GET / HTTP/2.0", 505),
        (b"G(T / HTTP/1.1", 400),
        (b"GET nopath HTTP/1.1", 400),
        (b"GET / HTTP/1.1\r\nBad Header", 400),
        (b"GET / HTTP/1.1\r\n Folded: x", 400),
        (b"PUT / HTTP/1.1\r\nContent-Length: -1", 400),
        (b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2", 400),
        (b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2", 400),
        (b"PUT / HTTP/1.1\r\nTransfer-Encoding: gzip", 501),
    ],
)
def test_malformed_heads_are_refused_with_their_status(raw: bytes, status: int) -> None:
    with pytest.raises(HttpError) as err:
        parse_head(raw)
    assert err.value.status == status


def test_keep_alive_follows_the_version_and_connection_header() -> None:
    assert not parse_head(b"GET / HTTP/1.1\r\nConnection: close").keep_alive
    assert not parse_head(b"GET / HTTP/1.0").keep_alive
    assert parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive").keep_alive
    assert parse_head(b"GET http://h:1/a?b HTTP/1.1").target == "/a?b"


def test_chunked_body_decodes_across_arbitrary_splits() -> None:
    wire = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\nNEXT"
    for cut in range(1, len(wire)):
        body = ChunkedBody(limit=100)
        buf = bytearray(wire[:cut])
        done = body.feed(buf)
        if not done:
            buf += wire[cut:]
            done = body.feed(buf)
        else:
            buf += wire[cut:]
        assert done and bytes(body.body) == b"hello, world", cut
        assert bytes(buf) == b"NEXT", cut  # what follows the body is left alone


@pytest.mark.parametrize(
    ("wire", "status"),
    [(b"zz\r\n", 400), (b"5\r\nhelloXX", 400), (b"ff\r\n", 413), (b"-1\r\n", 400)],
)
def test_bad_chunks_are_refused(wire: bytes, status: int) -> None:
    with pytest.raises(HttpError) as err:
        ChunkedBody(limit=100).feed(bytearray(wire))
    assert err.value.status == status


async def _ok(request: web.Request) -> web.StreamResponse:
    return web.Response(text=request.method)


def test_routes_match_encoded_paths_and_decode_values() -> None:
    app = web.Application()
    app.router.add_put("/v1/agent/service/register", _ok)
    app.router.add_get("/v1/agent/service/{id}", _ok)
    app.router.add_get("/v1/kv/{key:.*}", _ok)
    app.router.add_put("/v1/agent/check/{verb:pass|warn|fail}/{id}", _ok)
    r = app.router
    handler, match, _ = r.resolve("GET", "/v1/kv/a%2Fb/%E2%82%AC")
    assert handler is _ok and match == {"key": "a/b/\u20ac"}
    assert r.resolve("GET", "/v1/agent/service/a%2Fb")[1] == {"id": "a/b"}
    # A static path of another method falls through to the pattern, as in aiohttp.
    assert r.resolve("GET", "/v1/agent/service/register")[1] == {"id": "register"}
    assert r.resolve("PUT", "/v1/agent/check/pass/c1")[1] == {"verb": "pass", "id": "c1"}
    handler, _, allowed = r.resolve("PUT", "/v1/agent/check/oops/c1")
    assert handler is None and allowed == set()
    handler, _, allowed = r.resolve("DELETE", "/v1/agent/service/register")
    assert handler is None and allowed == {"PUT", "GET", "HEAD"}
    assert r.resolve("HEAD", "/v1/kv/x")[0] is _ok
    with pytest.raises(ValueError, match="routed twice"):
        r.add_put("/v1/agent/service/register", _ok)


def test_app_answers_404_and_405() -> None:
    app = web.Application()
    app.router.add_put("/a", _ok)

    def request(method: str, path: str) -> web.Request:
        return web.Request(method, path, (1, 1), web.Headers({}), b"", app, None, True)  # type: ignore[arg-type]

    async def go() -> None:
        r404 = await app.handle(request("GET", "/b"))
        r405 = await app.handle(request("GET", "/a"))
        assert isinstance(r404, web.Response) and r404.status == 404
        assert isinstance(r405, web.Response) and r405.status == 405
        assert r405.headers["Allow"] == "PUT"

    asyncio.run(go())


def test_query_keeps_repeated_names_and_decodes_plus() -> None:
    q = web.Query("tag=a&tag=b&x=a+b&y=%2B&flag")
    assert q.getall("tag") == ["a", "b"] and q["tag"] == "a"
    assert q["x"] == "a b" and q["y"] == "+" and q["flag"] == "" and "flag" in q
    assert q.get("missing") is None and q.getall("missing", []) == []
