"""Health checks of every kind against real servers this test runs on
loopback: HTTP (aiohttp), TCP, gRPC (grpcio's own health service), TTL and
scripts. Statuses are read back through py-consul, as a user would."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import backends
import consul
import pytest

from cove.agent.consul import ConsulServer
from cove.clock import SystemClock
from cove.store.base import Store

backend_store = backends.backend_store  # the fixture: SQLite, then etcd


@pytest.fixture(scope="module")
def server(backend_store: Store) -> Iterator[ConsulServer]:
    with ConsulServer(
        backend_store, SystemClock(), node_name="chk", enable_script_checks=True
    ) as srv:
        yield srv


@pytest.fixture
def c(server: ConsulServer) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=server.port)


class Web:
    """A loopback HTTP server whose answer the test sets."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b"fine"
        self.seen: list[tuple[str, dict[str, str], bytes]] = []
        web = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                web.seen.append((self.command, dict(self.headers), self.rfile.read(length)))
                self.send_response(web.status)
                self.send_header("Content-Length", str(len(web.body)))
                self.end_headers()
                self.wfile.write(web.body)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def web() -> Iterator[Web]:
    w = Web()
    yield w
    w.close()


def uniq(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def wait_status(
    c: consul.Consul, check_id: str, want: str, deadline: float = 15.0
) -> dict[str, Any]:
    end = time.monotonic() + deadline
    last: dict[str, Any] = {}
    while time.monotonic() < end:
        last = c.agent.checks().get(check_id, {})
        if last.get("Status") == want:
            return last
        time.sleep(0.05)
    raise AssertionError(f"check {check_id} never became {want}: {last}")


def register(c: consul.Consul, name: str, check: dict[str, Any]) -> str:
    c.agent.service.register(name, service_id=name, port=1, check=check)
    return f"service:{name}"


def test_http_check_follows_status_codes(c: consul.Consul, web: Web) -> None:
    url = f"http://127.0.0.1:{web.port}/health"
    cid = register(c, uniq("http"), {"HTTP": url, "Interval": "1s", "Timeout": "2s"})
    got = wait_status(c, cid, "passing")
    assert "200" in got["Output"] and "fine" in got["Output"]
    web.status = 429
    wait_status(c, cid, "warning")
    web.status = 503
    wait_status(c, cid, "critical")
    web.status = 204
    web.body = b""
    wait_status(c, cid, "passing")


def test_http_check_method_header_body(c: consul.Consul, web: Web) -> None:
    url = f"http://127.0.0.1:{web.port}/post"
    check = {"HTTP": url, "Interval": "1s", "Method": "POST", "Body": "ping",
             "Header": {"X-Probe": ["yes"]}}  # fmt: skip
    cid = register(c, uniq("post"), check)
    wait_status(c, cid, "passing")
    method, headers, body = web.seen[-1]
    assert (method, headers.get("X-Probe"), body) == ("POST", "yes", b"ping")


def test_http_output_is_cut_at_4k(c: consul.Consul, web: Web) -> None:
    web.body = b"x" * 10_000
    cid = register(c, uniq("big"), {"HTTP": f"http://127.0.0.1:{web.port}/", "Interval": "1s"})
    got = wait_status(c, cid, "passing")
    assert len(got["Output"].encode()) <= 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tcp_check(c: consul.Consul) -> None:
    port = free_port()
    cid = register(c, uniq("tcp"), consul.Check.tcp("127.0.0.1", port, "1s", timeout="1s"))
    wait_status(c, cid, "critical")
    listener = socket.create_server(("127.0.0.1", port))
    try:
        got = wait_status(c, cid, "passing")
        assert "Success" in got["Output"]
    finally:
        listener.close()
    wait_status(c, cid, "critical")


@pytest.fixture
def grpc_server() -> Iterator[tuple[int, Any]]:
    grpc = pytest.importorskip("grpc")
    health = pytest.importorskip("grpc_health.v1.health")
    pb = pytest.importorskip("grpc_health.v1.health_pb2")
    health_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_grpc.add_HealthServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    servicer.set("", pb.HealthCheckResponse.SERVING)
    servicer.set("app", pb.HealthCheckResponse.SERVING)

    def set_status(service: str, serving: bool) -> None:
        want = pb.HealthCheckResponse.SERVING if serving else pb.HealthCheckResponse.NOT_SERVING
        servicer.set(service, want)

    yield port, set_status
    srv.stop(grace=None)


def test_grpc_check_against_grpcio_server(
    c: consul.Consul, grpc_server: tuple[int, Callable[[str, bool], None]]
) -> None:
    port, set_status = grpc_server
    whole = register(c, uniq("grpc"), consul.Check.grpc(f"127.0.0.1:{port}", "1s"))
    app = register(c, uniq("grpcapp"), consul.Check.grpc(f"127.0.0.1:{port}/app", "1s"))
    missing = register(c, uniq("grpcnone"), consul.Check.grpc(f"127.0.0.1:{port}/nope", "1s"))
    wait_status(c, whole, "passing")
    wait_status(c, app, "passing")
    wait_status(c, missing, "critical")  # NOT_FOUND from the server
    set_status("app", False)
    got = wait_status(c, app, "critical")
    assert "NOT_SERVING" in got["Output"]
    set_status("app", True)
    wait_status(c, app, "passing")


def test_ttl_check_expires(c: consul.Consul) -> None:
    name = uniq("ttl")
    c.agent.check.register(name, check=consul.Check.ttl("1s"))
    c.agent.check.ttl_pass(name)
    assert c.agent.checks()[name]["Status"] == "passing"
    got = wait_status(c, name, "critical", deadline=10)
    assert "TTL expired" in got["Output"]


def test_success_before_passing_and_failures_before_critical(c: consul.Consul, web: Web) -> None:
    url = f"http://127.0.0.1:{web.port}/"
    check = {"HTTP": url, "Interval": "1s", "SuccessBeforePassing": 3,
             "FailuresBeforeCritical": 3, "Status": "critical"}  # fmt: skip
    cid = register(c, uniq("sbp"), check)
    start = time.monotonic()
    wait_status(c, cid, "passing")
    # Three successes one interval apart: at least two intervals.
    assert time.monotonic() - start >= 1.8
    web.status = 500
    start = time.monotonic()
    wait_status(c, cid, "critical")
    assert time.monotonic() - start >= 1.8


def test_script_check(c: consul.Consul) -> None:
    ok = register(c, uniq("sh"), {"Args": ["sh", "-c", "echo hello"], "Interval": "1s"})
    warn = register(c, uniq("sh"), {"Args": ["sh", "-c", "echo meh; exit 1"], "Interval": "1s"})
    crit = register(c, uniq("sh"), {"Args": ["sh", "-c", "exit 2"], "Interval": "1s"})
    assert wait_status(c, ok, "passing")["Output"].strip() == "hello"
    assert wait_status(c, warn, "warning")["Output"].strip() == "meh"
    wait_status(c, crit, "critical")


def test_deregister_critical_service_after(c: consul.Consul) -> None:
    name = uniq("dereg")
    c.agent.service.register(
        name, service_id=name, port=1,
        check={"TTL": "1s", "DeregisterCriticalServiceAfter": "1s"},
    )  # fmt: skip
    end = time.monotonic() + 15
    while name in c.agent.services() and time.monotonic() < end:
        time.sleep(0.1)
    assert name not in c.agent.services()
    assert c.health.service(name)[1] == []


def test_agent_restart_keeps_statuses(web: Web, tmp_path: Any) -> None:
    from cove.store.sqlite import SqliteStore

    path = str(tmp_path / "state.db")
    url = f"http://127.0.0.1:{web.port}/"
    check = {"HTTP": url, "Interval": "1s", "SuccessBeforePassing": 2}
    store = SqliteStore(path, SystemClock())
    with ConsulServer(store, SystemClock(), node_name="rs") as srv:
        c = consul.Consul(port=srv.port)
        cid = register(c, "restarted", check)
        wait_status(c, cid, "passing")
    store.close()
    store = SqliteStore(path, SystemClock())
    try:
        with ConsulServer(store, SystemClock(), node_name="rs") as srv:
            c = consul.Consul(port=srv.port)
            seen = set()
            end = time.monotonic() + 2.5  # more than two probes of the new agent
            while time.monotonic() < end:
                _, entries = c.health.service("restarted")
                seen |= {ch["Status"] for e in entries for ch in e["Checks"]}
                time.sleep(0.05)
            assert seen == {"passing"}
    finally:
        store.close()
