"""The registry through a real `cove agent` (in its own host namespace):
py-consul against the agent's TCP port, `cove service` / `cove kv` through
its socket, and an HTTP check against a server on the namespace's loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.root

consul = pytest.importorskip("consul")


@pytest.fixture
def registry_agent(agent: Any) -> Any:
    status, _ = agent.api("GET", "/v1/agent/self")
    assert status == 200, "the agent does not serve /v1"
    return agent


@pytest.fixture
def web() -> Iterator[tuple[int, list[int]]]:
    """An HTTP server on the test namespace's loopback; answers code[0]."""
    code = [200]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(code[0])
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], code
    finally:
        httpd.shutdown()
        httpd.server_close()


def wait_for(fn: Any, deadline: float = 20.0) -> Any:
    end = time.monotonic() + deadline
    while True:
        value = fn()
        if value or time.monotonic() > end:
            return value
        time.sleep(0.1)


def test_http_check_through_agent(registry_agent: Any, web: tuple[int, list[int]]) -> None:
    port, code = web
    c = consul.Consul(host="127.0.0.1", port=registry_agent.http_port)
    check = consul.Check.http(f"http://127.0.0.1:{port}/", "1s")
    assert c.agent.service.register("web", service_id="web1", port=port, check=check)
    assert wait_for(lambda: len(c.health.service("web", passing=True)[1]) == 1)
    code[0] = 500
    assert wait_for(lambda: c.health.service("web", passing=True)[1] == [])
    me = c.agent.self()
    assert me["Stats"]["consul"]["leader_addr"] == c.status.leader()
    _, checks = c.health.node(me["Config"]["NodeName"])
    assert {ch["CheckID"]: ch["Status"] for ch in checks}["serfHealth"] == "passing"


def test_cli_service_and_kv(registry_agent: Any, tmp_path: Path) -> None:
    spec = tmp_path / "svc.json"
    spec.write_text(json.dumps({"Name": "shop", "ID": "shop-1", "Port": 81,
                                "Check": {"TTL": "60s", "Status": "passing"}}))  # fmt: skip
    registry_agent.ok("service", "register", "-f", str(spec))
    assert "shop" in registry_agent.ok("service", "ls")
    assert json.loads(registry_agent.ok("service", "inspect", "shop"))[0]["Service"]["Port"] == 81
    registry_agent.ok("kv", "put", "cfg/a", "1")
    assert registry_agent.ok("kv", "get", "cfg/a") == "1"
    assert registry_agent.ok("kv", "ls", "cfg/").split() == ["cfg/a"]
    registry_agent.ok("kv", "rm", "cfg/a")
    assert registry_agent.cli("kv", "get", "cfg/a").returncode == 3
    registry_agent.ok("service", "deregister", "shop-1")
    assert registry_agent.cli("service", "inspect", "shop").returncode == 3
    assert "alive" in registry_agent.ok("members")


def test_state_survives_agent_restart(registry_agent: Any) -> None:
    c = consul.Consul(host="127.0.0.1", port=registry_agent.http_port)
    c.kv.put("durable", "yes")
    c.agent.service.register("keep", service_id="keep1", port=1)
    registry_agent.stop()
    registry_agent.start()
    c = consul.Consul(host="127.0.0.1", port=registry_agent.http_port)
    assert c.kv.get("durable")[1]["Value"] == b"yes"
    assert "keep1" in c.agent.services()
