"""Request framing and routing of cove's HTTP server (pure logic)."""

from __future__ import annotations

import asyncio

import pytest

from cove.api import http as web
from cove.api.http.message import HttpError, Message, RequestParser, parse_head


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
        (b"PUT / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked", 501),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b", 400),
        (b"GET * HTTP/1.1", 400),
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


def _feed(wire: bytes, *, cut: int | None = None, limit: int = 100) -> RequestParser:
    parser = RequestParser(max_body=limit)
    if cut is None:
        parser.feed(wire)
    else:
        parser.feed(wire[:cut])
        parser.feed(wire[cut:])
    return parser


def test_chunked_body_decodes_across_arbitrary_splits() -> None:
    wire = (
        b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nTrailer: x\r\n\r\n"
        b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    for cut in range(1, len(wire)):
        out = list(_feed(wire, cut=cut).out)
        assert [type(m) for m in out] == [Message, Message], cut
        first, second = out
        assert isinstance(first, Message) and isinstance(second, Message)
        assert first.body == b"hello, world" and first.chunked, cut
        assert second.target == "/next", cut  # what follows the body is the next request


@pytest.mark.parametrize(
    ("chunks", "status"),
    [(b"zz\r\n", 400), (b"5\r\nhelloXX", 400), (b"ff\r\n" + b"x" * 200, 413), (b"-1\r\n", 400)],
)
def test_bad_chunks_are_refused(chunks: bytes, status: int) -> None:
    wire = b"PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    out = list(_feed(wire).out)
    assert len(out) == 1 and isinstance(out[0], HttpError), out
    assert out[0].status == status


def test_expect_continue_is_wanted_once_before_the_body() -> None:
    parser = RequestParser(max_body=100)
    parser.feed(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert parser.wants_continue() and not parser.wants_continue()
    parser.feed(b"ok")
    out = list(parser.out)
    assert isinstance(out[0], Message) and out[0].body == b"ok"


def test_head_and_body_limits() -> None:
    huge = b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70_000 + b"\r\n\r\n"
    for cut in (None, 1000, 50_000):
        out = list(_feed(huge, cut=cut, limit=10).out)
        assert isinstance(out[0], HttpError) and out[0].status == 431, cut
    # A head that never ends is refused too, not buffered without bound.
    parser = RequestParser(max_body=10)
    parser.feed(b"GET / HTTP/1.1\r\n")
    for _ in range(40):
        parser.feed(b"X-Long: " + b"b" * 8000)
    assert isinstance(parser.out[0], HttpError) and parser.out[0].status == 431
    over = list(_feed(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n", limit=10).out)
    assert isinstance(over[0], HttpError) and over[0].status == 413


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


def test_trailer_fields_do_not_become_headers() -> None:
    wire = (
        b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nhi\r\n0\r\nX-Consul-Token: smuggled\r\nContent-Type: application/json\r\n\r\n"
    )
    out = list(_feed(wire).out)
    assert isinstance(out[0], Message) and out[0].body == b"hi"
    assert "x-consul-token" not in out[0].headers and "content-type" not in out[0].headers


def test_long_pipelines_are_not_mistaken_for_a_long_head() -> None:
    one = b"PUT /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    burst = one * 4000 + b"GET /next HTTP/1.1\r\nHost: x"  # about 230 KB in one read
    parser = RequestParser(max_body=100)
    parser.feed(burst)
    parser.feed(b"\r\n\r\n")
    out = list(parser.out)
    assert len(out) == 4001 and all(isinstance(m, Message) for m in out)
    big = b"PUT /b HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n"
    parser = RequestParser(max_body=300_000)
    parser.feed(big + b"y" * 150_000)
    parser.feed(b"y" * 50_000 + b"GET /n HTTP/1.1\r\nHost: x")
    parser.feed(b"\r\n\r\n")
    assert [type(m) for m in parser.out] == [Message, Message]
