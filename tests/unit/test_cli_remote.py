"""The CLI pointed at a TCP address: `--host`/`COVE_HOST`, the token from
`--token`, `COVE_TOKEN` or `CONSUL_HTTP_TOKEN`, and what it says when the
address is wrong."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Iterator

import pytest

from cove.api import http as web
from cove.cli.main import main


@pytest.fixture
def fake_agent() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A stand-in agent answering GET /v1/kv/{key}; records request headers."""
    seen: list[dict[str, str]] = []

    async def kv(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers.lowered))
        value = base64.b64encode(b"v").decode()
        return web.json_response([{"Key": request.match_info["key"], "Value": value}])

    app = web.Application()
    app.router.add_get("/v1/kv/{key:.*}", kv)
    loop = asyncio.new_event_loop()
    server = web.HttpServer(app)
    loop.run_until_complete(server.setup())
    port = loop.run_until_complete(server.start_tcp("127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.parametrize(
    ("env", "flags", "token"),
    [
        ({"COVE_TOKEN": "t1"}, [], "t1"),
        ({"CONSUL_HTTP_TOKEN": "t2"}, [], "t2"),
        ({"COVE_TOKEN": "t1", "CONSUL_HTTP_TOKEN": "t2"}, ["--token", "t3"], "t3"),
        ({}, [], None),
    ],
)
def test_host_and_token_from_flags_and_environment(
    fake_agent: tuple[str, list[dict[str, str]]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    flags: list[str],
    token: str | None,
) -> None:
    url, seen = fake_agent
    for name in ("COVE_HOST", "COVE_TOKEN", "CONSUL_HTTP_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COVE_HOST", url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main([*flags, "kv", "get", "a/b"]) == 0
    assert capsys.readouterr().out == "v"
    assert seen[-1].get("x-consul-token") == token
    assert seen[-1]["host"] == url.removeprefix("http://")


def test_a_bad_address_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--host", "ftp://x", "kv", "get", "a"]) == 2
    assert "expected http://HOST:PORT or https://HOST:PORT" in capsys.readouterr().err
