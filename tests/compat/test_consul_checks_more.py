"""UDP, H2PING and alias checks. UDP and H2PING run against real servers
this test runs on loopback: a UDP echo server, a silent UDP socket and a
closed port; grpcio's HTTP/2 server in cleartext (h2c) and behind TLS with a
certificate made by ``openssl``. Alias checks follow other services' checks.
Statuses are read back through py-consul, as a user would."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import consul
import pytest
import test_consul_checks as base
from test_consul_checks import register, uniq, wait_status

# The same agent fixtures as the other check tests.
backend_store = base.backend_store
server = base.server
c = base.c


def wait_probed(c: consul.Consul, check_id: str, want: str) -> dict[str, Any]:
    """``wait_status`` once a probe has run: a check starts critical with no
    output, so waiting for "critical" alone can return before its first probe."""
    end = time.monotonic() + 15.0
    got = wait_status(c, check_id, want)
    while not got.get("Output") and time.monotonic() < end:
        time.sleep(0.05)
        got = wait_status(c, check_id, want)
    return got


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def udp_check(port: int) -> dict[str, Any]:
    return {"UDP": f"127.0.0.1:{port}", "Interval": "1s", "Timeout": "1s"}


def test_udp_check_passes_on_a_reply_or_silence_and_fails_on_port_unreachable(
    c: consul.Consul,
) -> None:
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                data, peer = echo.recvfrom(2048)
                seen.append(data)
                echo.sendto(data, peer)
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    closed = free_udp_port()
    try:
        answering = register(c, uniq("udpecho"), udp_check(echo.getsockname()[1]))
        quiet = register(c, uniq("udpquiet"), udp_check(silent.getsockname()[1]))
        refused = register(c, uniq("udpnone"), udp_check(closed))
        got = wait_status(c, answering, "passing")
        assert "Success" in got["Output"] and seen
        wait_status(c, quiet, "passing")
        got = wait_probed(c, refused, "critical")
        assert "refused" in got["Output"].lower()
        # The server goes away: its port now answers with ICMP unreachable.
        echo.close()
        wait_status(c, answering, "critical")
    finally:
        echo.close()
        silent.close()


@pytest.fixture
def h2_servers(tmp_path: Path) -> Iterator[tuple[int, int, Any]]:
    """(h2c port, TLS port, the h2c server) of grpcio HTTP/2 servers."""
    grpc = pytest.importorskip("grpc")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    plain = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    plain_port = plain.add_insecure_port("127.0.0.1:0")
    tls = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    tls_port = tls.add_secure_port("127.0.0.1:0", creds)
    plain.start()
    tls.start()
    yield plain_port, tls_port, plain
    plain.stop(grace=None)
    tls.stop(grace=None)


def test_h2ping_check_over_h2c_and_tls(c: consul.Consul, h2_servers: tuple[int, int, Any]) -> None:
    plain_port, tls_port, plain = h2_servers
    h2c = register(
        c,
        uniq("h2c"),
        {"H2PING": f"127.0.0.1:{plain_port}", "H2PingUseTLS": False, "Interval": "1s"},
    )
    # TLS is Consul's default; the test's certificate is self-signed.
    tls = register(
        c,
        uniq("h2tls"),
        {"H2PING": f"127.0.0.1:{tls_port}", "TLSSkipVerify": True, "Interval": "1s"},
    )
    unverified = register(
        c, uniq("h2strict"), {"H2PING": f"127.0.0.1:{tls_port}", "Interval": "1s"}
    )
    # TLS towards a cleartext server cannot work.
    mismatch = register(c, uniq("h2mis"), {"H2PING": f"127.0.0.1:{plain_port}", "Interval": "1s"})
    got = wait_status(c, h2c, "passing")
    assert "success" in got["Output"]
    wait_status(c, tls, "passing")
    got = wait_probed(c, unverified, "critical")
    assert "certificate" in got["Output"].lower()
    wait_status(c, mismatch, "critical")
    plain.stop(grace=None)
    wait_status(c, h2c, "critical")


@pytest.mark.parametrize(
    "check",
    [
        {"UDP": "127.0.0.1", "Interval": "1s"},
        {"H2PING": "localhost:99999", "Interval": "1s"},
        {"H2PING": "127.0.0.1:80"},
        {"UDP": "127.0.0.1:53", "TCP": "127.0.0.1:53", "Interval": "1s"},
    ],
)
def test_bad_udp_and_h2ping_checks_are_refused(c: consul.Consul, check: dict[str, Any]) -> None:
    name = "bad-" + secrets.token_hex(3)
    with pytest.raises(consul.ConsulException) as err:
        c.agent.service.register(name, service_id=name, port=1, check=check)
    assert "Invalid check" in str(err.value)
    assert name not in c.agent.services()


def wait_output(c: consul.Consul, check_id: str, status: str, text: str) -> None:
    """Wait for ``status`` with ``text`` in the output (a new check already
    starts critical, with no output)."""
    deadline = time.monotonic() + 15
    got: dict[str, Any] = {}
    while time.monotonic() < deadline:
        got = c.agent.checks().get(check_id, {})
        if got.get("Status") == status and text in got.get("Output", ""):
            return
        time.sleep(0.05)
    raise AssertionError(f"check {check_id} never became {status} with {text!r}: {got}")


def test_alias_check_mirrors_the_worst_check_of_the_aliased_service(c: consul.Consul) -> None:
    web = uniq("web")
    c.agent.service.register(web, service_id=web, port=80, check=consul.Check.ttl("60s"))
    sidecar = uniq("sidecar")
    alias = register(c, sidecar, {"AliasService": web})
    missing = register(c, uniq("orphan"), {"AliasService": uniq("nothing")})
    got = wait_status(c, alias, "critical")  # a TTL check starts critical
    c.agent.check.ttl_pass(f"service:{web}")
    got = wait_status(c, alias, "passing")
    assert web in got["Output"]
    c.agent.check.ttl_warn(f"service:{web}")
    wait_status(c, alias, "warning")
    c.agent.check.ttl_pass(f"service:{web}")
    wait_status(c, alias, "passing")
    wait_output(c, missing, "critical", "could not be found")
    # The aliased service leaves: its alias turns critical.
    c.agent.service.deregister(web)
    wait_status(c, alias, "critical")
    # Health queries see the alias like any other check.
    _, nodes = c.health.service(sidecar, passing=True)
    assert nodes == []


def test_alias_of_a_node_follows_the_node_checks(c: consul.Consul) -> None:
    node = c.agent.self()["Config"]["NodeName"]
    here = register(c, uniq("nodealias"), {"AliasNode": node})
    gone = register(c, uniq("ghostalias"), {"AliasNode": uniq("ghost")})
    wait_status(c, here, "passing")
    wait_output(c, gone, "critical", "could not be found")
