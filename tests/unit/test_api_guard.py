"""The checks before routing: the native API by listener, Host (DNS
rebinding), Origin (cross-site writes) and Content-Type, as a client sees
them through a real app."""

from __future__ import annotations

import asyncio
import ipaddress
import json

import pytest

from cove.api import http as web
from cove.api.guard import Guard, is_local_address, request_token, split_host

UNIX = web.Listener(web.Transport.UNIX, path="/run/cove/agent.sock")
TCP = web.Listener(web.Transport.TCP, "127.0.0.1", 8500)
TLS = web.Listener(web.Transport.TLS, "127.0.0.1", 8501)
ANY = web.Listener(web.Transport.TCP, "0.0.0.0", 8500)


def _app(guard: Guard) -> tuple[web.Application, list[str]]:
    calls: list[str] = []

    async def ok(request: web.Request) -> web.StreamResponse:
        calls.append(f"{request.method} {request.raw_path}")
        return web.json_response({"ok": True})

    app = web.Application()
    for path in ("/api/containers", "/v1/agent/service/register", "/v1/kv/{key:.*}"):
        app.router.add_route("POST", path, ok)
        app.router.add_route("PUT", path, ok)
        app.router.add_get(path, ok)
    app.router.add_get("/metrics", ok)
    app.screens.append(guard)
    return app, calls


def _send(
    listener: web.Listener,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    guard: Guard | None = None,
) -> tuple[int, dict[str, str], list[str]]:
    app, calls = _app(guard or Guard.of("/run/cove/agent.sock", ["cove.internal"]))
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    if body:
        lowered["content-length"] = str(len(body))
    request = web.Request(
        method,
        target,
        (1, 1),
        web.Headers(lowered),
        body,
        app,
        None,
        True,
        listener,  # type: ignore[arg-type]
    )
    resp = asyncio.run(app.handle(request))
    assert isinstance(resp, web.Response)
    return resp.status, json.loads(resp.body), calls


JSON = {"Content-Type": "application/json"}


def test_native_api_answers_on_the_socket_and_is_refused_on_plain_tcp() -> None:
    status, _, calls = _send(UNIX, "POST", "/api/containers", JSON, b"{}")
    assert status == 200 and calls == ["POST /api/containers"]
    for method in ("GET", "POST"):
        status, body, calls = _send(TCP, method, "/api/containers", {"Host": "127.0.0.1:8500"})
        assert status == 403 and calls == []
        assert body["kind"] == "permission_denied"
        assert "/run/cove/agent.sock" in body["error"] and "--https" in body["error"]


def test_native_api_over_tls_asks_the_gate_with_the_token() -> None:
    asked: list[tuple[str | None, bool]] = []

    def gate(token: str | None, is_write: bool) -> bool:
        asked.append((token, is_write))
        return token == "op"

    guard = Guard.of("/s", gate=gate)
    host = {"Host": "127.0.0.1:8501"}
    status, body, calls = _send(TLS, "GET", "/api/containers", host, guard=guard)
    assert status == 403 and "operator" in body["error"] and calls == []
    status, _, calls = _send(
        TLS, "POST", "/api/containers", {**host, **JSON, "X-Consul-Token": "op"}, b"{}", guard=guard
    )
    assert status == 200 and calls == ["POST /api/containers"]
    status, _, _ = _send(TLS, "GET", "/api/containers?token=op", host, guard=guard)
    assert status == 200
    assert asked == [(None, False), ("op", True), ("op", False)]
    # Without ACLs nothing passes, and the refusal says how to enable them.
    status, body, _ = _send(TLS, "GET", "/api/containers", {**host, "X-Consul-Token": "op"})
    assert status == 403 and "--acl-enabled" in body["error"]


def test_token_sources() -> None:
    def req(headers: dict[str, str], target: str = "/v1/x") -> web.Request:
        return web.Request("GET", target, (1, 1), web.Headers(headers), b"", None, None, True)  # type: ignore[arg-type]

    assert request_token(req({"x-consul-token": "a"})) == "a"
    assert request_token(req({"authorization": "Bearer b"})) == "b"
    assert request_token(req({"authorization": "Basic b"})) is None
    assert request_token(req({}, "/v1/x?token=c")) == "c"
    assert request_token(req({})) is None


@pytest.mark.parametrize(
    ("listener", "host", "ok"),
    [
        (TCP, "127.0.0.1:8500", True),
        (TCP, "127.0.0.1", True),
        (TCP, "localhost:8500", True),
        (TCP, "LOCALHOST", True),
        (TCP, "127.0.0.2:8500", True),  # any loopback address
        (TCP, "[::1]:8500", True),
        (TCP, "cove.internal:8500", True),  # --http-allowed-host
        (TCP, "127.0.0.1:8501", False),  # another port: another origin
        (TCP, "evil.example:8500", False),  # a rebound name
        (TCP, "localhost.evil.example", False),
        (TCP, "10.1.2.3:8500", False),
        (TCP, "127.0.0.1:85x0", False),
        (TCP, "", False),
        (ANY, "10.1.2.3:8500", True),  # a local address (see is_local below)
        (ANY, "10.9.9.9:8500", False),
        (ANY, "localhost:8500", True),
        (ANY, "evil.example:8500", False),
    ],
)
def test_host_must_name_the_listener(listener: web.Listener, host: str, ok: bool) -> None:
    guard = Guard.of("/s", ["cove.internal"])
    guard.is_local = lambda addr: addr == ipaddress.ip_address("10.1.2.3")
    status, body, calls = _send(listener, "GET", "/metrics", {"Host": host}, guard=guard)
    if ok:
        assert status == 200 and calls
    else:
        assert status == 421 and calls == [] and "--http-allowed-host" in body["error"]


def test_unix_socket_skips_the_browser_checks() -> None:
    status, _, _ = _send(
        UNIX, "POST", "/v1/agent/service/register", {"Host": "x", "Origin": "http://evil"}, b"{}"
    )
    assert status == 200


def test_foreign_origin_cannot_change_state() -> None:
    host = {"Host": "127.0.0.1:8500"}
    for origin in ("http://evil.example", "null", "https://127.0.0.1:8500", "http://127.0.0.1"):
        status, body, calls = _send(
            TCP, "PUT", "/v1/kv/a", {**host, "Origin": origin}, b"x", guard=None
        )
        assert status == 403 and calls == [], origin
        assert "Origin" in body["error"]
    status, _, _ = _send(TCP, "PUT", "/v1/kv/a", {**host, "Origin": "http://127.0.0.1:8500"}, b"x")
    assert status == 200
    # Reads with a foreign Origin are answered (the browser keeps the answer).
    status, _, _ = _send(TCP, "GET", "/v1/kv/a", {**host, "Origin": "http://evil.example"})
    assert status == 200


@pytest.mark.parametrize(
    ("method", "target", "ctype", "status"),
    [
        ("POST", "/v1/agent/service/register", "text/plain;charset=UTF-8", 415),
        ("POST", "/v1/agent/service/register", "multipart/form-data; boundary=x", 415),
        ("POST", "/v1/agent/service/register", "application/x-www-form-urlencoded", 200),
        ("POST", "/v1/agent/service/register", None, 200),
        ("POST", "/v1/agent/service/register", "application/json", 200),
        # A page cannot PUT without a CORS preflight, which cove never
        # grants; py-consul's async client sends JSON as text/plain.
        ("PUT", "/v1/agent/service/register", "text/plain;charset=UTF-8", 200),
        ("PUT", "/v1/agent/service/register", "application/x-www-form-urlencoded", 200),
        ("PUT", "/v1/kv/some/key", "text/plain", 200),  # KV values are raw bytes
        ("PUT", "/v1/kv/some/key", "multipart/form-data", 200),
    ],
)
def test_v1_bodies_a_page_can_send_without_preflight_are_refused(
    method: str, target: str, ctype: str | None, status: int
) -> None:
    headers = {"Host": "127.0.0.1:8500"}
    if ctype:
        headers["Content-Type"] = ctype
    got, body, calls = _send(TCP, method, target, headers, b'{"Name": "web"}')
    assert got == status
    if status == 415:
        assert calls == [] and "Content-Type" in body["error"]


def test_native_api_bodies_must_be_json_over_tls() -> None:
    guard = Guard.of("/s", gate=lambda _t, _w: True)
    host = {"Host": "127.0.0.1:8501"}
    for ctype in (None, "text/plain", "application/x-www-form-urlencoded"):
        headers = {**host, **({"Content-Type": ctype} if ctype else {})}
        status, body, calls = _send(TLS, "POST", "/api/containers", headers, b"{}", guard=guard)
        assert status == 415 and calls == [] and "application/json" in body["error"]


def test_split_host() -> None:
    assert split_host("[::1]:80") == ("::1", 80)
    assert split_host("[::1]") == ("::1", None)
    assert split_host("::1") is None
    assert split_host("a:b") is None
    assert split_host("Example.COM") == ("example.com", None)


def test_local_addresses_are_those_this_host_can_bind() -> None:
    assert is_local_address(ipaddress.ip_address("127.0.0.1"))
    assert not is_local_address(ipaddress.ip_address("192.0.2.77"))  # TEST-NET-1
