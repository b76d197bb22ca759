"""Helpers for the container tests: a TCP/UDP echo server that answers with
its hostname, clients for it, and leak checks. (No tests here.)"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cove.agent.teardown import teardown

ECHO = """\
import selectors, socket, sys
port = int(sys.argv[1])
name = socket.gethostname().encode()
def listen(kind):
    # IPv4 and IPv6 on one socket; IPv4 only where the namespace has no IPv6
    try:
        s = socket.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        host = "::"
    except OSError:
        s, host = socket.socket(socket.AF_INET, kind), "0.0.0.0"
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    return s
t = listen(socket.SOCK_STREAM)
t.listen(64)
u = listen(socket.SOCK_DGRAM)
sel = selectors.DefaultSelector()
sel.register(t, selectors.EVENT_READ)
sel.register(u, selectors.EVENT_READ)
print("listening on", port, flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is t:
            c, _ = t.accept()
            c.settimeout(2)
            try:
                c.sendall(name + b":" + c.recv(4096))
            except OSError:
                pass
            c.close()
        else:
            data, addr = u.recvfrom(4096)
            u.sendto(name + b":" + data, addr)
"""

CLIENT = """\
import socket, sys
proto, port, addrs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for addr in addrs:
    if proto == "tcp":
        s = socket.create_connection((addr, port), timeout=3)
        s.sendall(b"ping")
        print(s.recv(4096).decode())
    else:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(b"ping", (addr, port))
        print(s.recvfrom(4096)[0].decode())
    s.close()
"""


@pytest.fixture(name="scripts")
def scripts_fixture(tmp_path: Path) -> tuple[str, str]:
    echo = tmp_path / "echo.py"
    echo.write_text(ECHO)
    client = tmp_path / "client.py"
    client.write_text(CLIENT)
    return str(echo), str(client)


@pytest.fixture(name="runtime_cleanup")
def runtime_cleanup_fixture(tmp_path: Path) -> Iterator[None]:
    """Request before ``agent``: runs after the agent's own clean-up and
    kills any container left behind, even when the supervisor is gone."""
    yield
    teardown(tmp_path / "state" / "run")


def need_containers(agent: Any) -> None:
    status, _ = agent.api("GET", "/api/containers")
    assert status == 200, "the agent does not serve /api/containers"


def tcp(addr: str, port: int, timeout: float = 3.0) -> str:
    with socket.create_connection((addr, port), timeout=timeout) as s:
        s.sendall(b"ping")
        return s.recv(4096).decode()


def udp(addr: str, port: int, timeout: float = 3.0) -> str:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(b"ping", (addr, port))
        return s.recvfrom(4096)[0].decode()


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something other than None or False
    without raising."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result is not None and result is not False:
                return result
        except (OSError, AssertionError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"condition not met in {timeout}s: {last!r}")


def inspect(agent: Any, name: str) -> dict[str, Any]:
    (out,) = json.loads(agent.ok("inspect", name))  # always a list, as Docker's
    assert isinstance(out, dict)
    return out


def address(agent: Any, name: str, network: str) -> str:
    return str(inspect(agent, name)["endpoints"][network]["ipv4"])


def host_veths() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}
    return {n for n in names if n.startswith("cv") and not n.startswith("cv-")}


def netns_files(agent: Any) -> set[str]:
    folder = agent.state_dir / "run" / "netns"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def assert_no_leaks(agent: Any, expected_containers: int) -> None:
    """Exactly the kernel objects the listed containers need, no more."""
    items = json.loads(agent.ok("ps", "-a", "--format", "json"))
    assert len(items) == expected_containers
    want_veths = {ep["host_veth"] for c in items for ep in c["endpoints"].values()}
    assert host_veths() == want_veths
    assert netns_files(agent) == {c["id"] for c in items}
    network = json.loads(agent.ok("network", "inspect", "vnet"))
    network = network[0] if isinstance(network, list) else network
    on_vnet = [c for c in items if "vnet" in c["endpoints"]]
    assert len(network.get("endpoints", [])) == len(on_vnet)


def run_echo(agent: Any, name: str, echo: str, *extra: str, port: int = 7) -> str:
    agent.ok("run", "-d", "--name", name, *extra, "--", "python3", "-S", "-u", echo, str(port))
    return name
