"""Per-container traffic and per-check status from a real agent, in
/metrics with Prometheus labels and in `cove stats`."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    address,
    eventually,
    run_echo,
    runtime_cleanup_fixture,
    scripts_fixture,
)

from agentproc import AgentProc

SEND = (
    "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for _ in range(50): s.sendto(b'x' * 1000, (sys.argv[1], 9))"
)


def _metrics(agent: AgentProc) -> str:
    url = f"http://127.0.0.1:{agent.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=20) as resp:
        return resp.read().decode()


def _value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} with {labels} in:\n{text[:3000]}")


def test_traffic_and_check_status_per_container_and_check(agent: AgentProc) -> None:
    agent.ok("network", "create", "mnet", "--subnet", "10.95.0.0/24")
    agent.ok("run", "-d", "--name", "src", "--network", "mnet", "--", "sleep", "600")
    agent.ok("run", "-d", "--name", "dst", "--network", "mnet", "--", "sleep", "600")
    dst_ip = json.loads(agent.ok("inspect", "dst"))[0]["endpoints"]["mnet"]["ipv4"]
    before = _metrics(agent)
    sent0 = _value(before, "cove_endpoint_transmit_bytes_total", container="src", network="mnet")
    agent.ok("exec", "src", "--", "python3", "-S", "-c", SEND, dst_ip)
    reg = {"Name": "web", "ID": "web1", "Port": 80, "Check": {"CheckID": "web-ttl", "TTL": "60s"}}
    assert agent.api("PUT", "/v1/agent/service/register", reg)[0] == 200
    assert agent.api("PUT", "/v1/agent/check/fail/web-ttl", None)[0] == 200
    text = _metrics(agent)
    assert "# TYPE cove_endpoint_transmit_bytes_total counter" in text
    sent = _value(text, "cove_endpoint_transmit_bytes_total", container="src", network="mnet")
    got = _value(text, "cove_endpoint_receive_bytes_total", container="dst", network="mnet")
    assert sent - sent0 >= 50_000
    assert got >= 50_000
    assert _value(text, "cove_check_status", check="web-ttl", status="critical") == 1
    assert _value(text, "cove_check_status", check="web-ttl", status="passing") == 0
    # `cove stats` shows the same counters.
    snap = json.loads(agent.ok("stats", "--no-stream", "--format", "json"))
    src = next(e for e in snap["endpoints"] if e["container"] == "src")
    assert src["out_bytes"] >= 50_000 and src["network"] == "mnet"
    table = agent.ok("stats", "--no-stream", "src")
    assert re.search(r"^src\s+mnet\s+", table, re.M), table
    assert "dst" not in table.split("SERVICE")[0]
    assert re.search(r"^web\s+web1\s+web-ttl\s+\S+\s+critical", table, re.M), table


@pytest.mark.usefixtures("runtime_cleanup")
def test_vip_connections_are_counted_per_backend(agent: AgentProc, scripts: Any) -> None:
    echo, client = scripts
    agent.ok("network", "create", "vipnet", "--subnet", "10.95.1.0/24")
    for name in ("b1", "b2"):
        run_echo(agent, name, echo, "--network", "vipnet", "--service", "echo:7")
    agent.ok("run", "-d", "--name", "cl", "--network", "vipnet", "--", "sleep", "600")
    vip = agent.ok("service", "vip", "echo").strip()
    backends = {name: address(agent, name, "vipnet") for name in ("b1", "b2")}

    def spread() -> set[str] | None:
        out = agent.ok("exec", "cl", "--", "python3", "-S", client, "tcp", "7", *[vip] * 20)
        names = {line.split(":")[0] for line in out.split()}
        return names if names == {"b1", "b2"} else None

    assert eventually(spread) == {"b1", "b2"}
    text = _metrics(agent)
    counts = {
        name: _value(text, "cove_vip_backend_connections", service="echo", backend=ip)
        for name, ip in backends.items()
    }
    assert all(n >= 1 for n in counts.values()), counts
    assert f'vip="{vip}"' in text and 'protocol="tcp"' in text


def test_dns_answers_are_counted_by_response_code(agent: AgentProc) -> None:
    import dns.message
    import dns.query
    import dns.rcode

    reg = {"Name": "web", "ID": "web1", "Port": 80, "Address": "10.95.2.5"}
    assert agent.api("PUT", "/v1/agent/service/register", reg)[0] == 200
    text = _metrics(agent)
    assert "# TYPE cove_dns_responses_total counter" in text
    before = {
        rc: _value(text, "cove_dns_responses_total", listener="host", rcode=rc)
        for rc in ("NOERROR", "NXDOMAIN")
    }

    def ask(name: str, tcp: bool = False) -> int:
        q = dns.message.make_query(name, "A")
        send = dns.query.tcp if tcp else dns.query.udp
        return int(send(q, "127.0.0.1", port=agent.dns_port, timeout=5).rcode())

    # Over UDP (the second and third of a kind from the hot path) and TCP.
    assert eventually(lambda: ask("web.service.cove") == dns.rcode.NOERROR)
    for _ in range(3):
        assert ask("web.service.cove") == dns.rcode.NOERROR
        assert ask("nope.service.cove") == dns.rcode.NXDOMAIN
    assert ask("web.service.cove", tcp=True) == dns.rcode.NOERROR
    assert ask("nope.service.cove", tcp=True) == dns.rcode.NXDOMAIN
    text = _metrics(agent)
    ok = _value(text, "cove_dns_responses_total", listener="host", rcode="NOERROR")
    nx = _value(text, "cove_dns_responses_total", listener="host", rcode="NXDOMAIN")
    assert ok - before["NOERROR"] >= 5  # the eventually's first try may have missed
    assert nx - before["NXDOMAIN"] == 4
    assert _value(text, "cove_dns_responses_total", listener="host", rcode="SERVFAIL") == 0


def test_check_latency_is_the_last_probes_duration(agent: AgentProc) -> None:
    import http.server
    import threading
    import time

    delay = [0.3]

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(delay[0])
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/health"
        check = {"CheckID": "slow-http", "HTTP": url, "Interval": "1s", "Timeout": "5s"}
        reg = {"Name": "slow", "ID": "slow1", "Port": 80, "Check": check}
        assert agent.api("PUT", "/v1/agent/service/register", reg)[0] == 200
        labels = {"check": "slow-http", "service": "slow", "service_id": "slow1"}

        def took() -> float | None:
            text = _metrics(agent)
            if "cove_check_duration_seconds{" not in text:
                return None
            return _value(text, "cove_check_duration_seconds", **labels)

        first = eventually(took)
        assert first is not None and 0.3 <= first < 3, first
        text = _metrics(agent)
        assert "# TYPE cove_check_duration_seconds gauge" in text
        assert _value(text, "cove_check_status", status="passing", **labels) == 1
        # The last probe's time, not a running maximum.
        delay[0] = 0.0
        assert eventually(lambda: (t := took()) is not None and t < 0.2)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
