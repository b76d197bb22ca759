"""Source-scoped DNS on gateway listeners, with real namespaces.

The test builds its own "host" namespace (switching the test thread into it,
so the DNS service and its sockets live there), two bridges for two
networks and three container namespaces wired with veths:

    web   on vnet (10.89.0.4) and back (10.90.0.4)
    redis on vnet (10.89.0.3)
    db    on back (10.90.0.5)

Containers use glibc (getent, via /etc/netns/<ns>/resolv.conf) and dig.
Upstream forwarding goes to a stub on the host namespace's loopback.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cove.clock import SystemClock
from cove.dns import DnsConfig, DnsService, Upstream
from cove.dns.testing import StubUpstream, put_endpoint, put_network
from cove.store.hub import WatchHub
from cove.store.memory import MemoryStore

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig"),
]

CLONE_NEWNET = 0x40000000


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=check)


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns failed")
    finally:
        os.close(fd)


@dataclass
class Topo:
    host: str
    ns: dict[str, str] = field(default_factory=dict)  # container -> namespace

    def in_ns(self, container: str, *args: str) -> subprocess.CompletedProcess[str]:
        return _run("ip", "netns", "exec", self.ns[container], *args, check=False)

    def getent(self, container: str, name: str) -> list[str]:
        out = self.in_ns(container, "getent", "hosts", name)
        return sorted(line.split()[0] for line in out.stdout.splitlines())

    def dig(self, container: str, *args: str) -> str:
        out = self.in_ns(container, "dig", "+tries=1", "+time=2", *args)
        return out.stdout


@pytest.fixture
def topo() -> Iterator[Topo]:
    tag = secrets.token_hex(3)
    t = Topo(host=f"cv{tag}h")
    namespaces = [t.host]
    old_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _run("ip", "netns", "add", t.host)
        h = ("ip", "-n", t.host)
        _run(*h, "link", "set", "lo", "up")
        for br, cidr in ((f"cv{tag}b1", "10.89.0.1/24"), (f"cv{tag}b2", "10.90.0.1/24")):
            _run(*h, "link", "add", br, "type", "bridge")
            _run(*h, "addr", "add", cidr, "dev", br)
            _run(*h, "link", "set", br, "up")
        plan = {
            "web": [("10.89.0.4", f"cv{tag}b1"), ("10.90.0.4", f"cv{tag}b2")],
            "redis": [("10.89.0.3", f"cv{tag}b1")],
            "db": [("10.90.0.5", f"cv{tag}b2")],
        }
        for i, (name, legs) in enumerate(plan.items()):
            ns = f"cv{tag}c{i}"
            t.ns[name] = ns
            namespaces.append(ns)
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            conf = Path("/etc/netns") / ns
            conf.mkdir(parents=True, exist_ok=True)
            gateway = legs[0][0].rsplit(".", 1)[0] + ".1"
            (conf / "resolv.conf").write_text(f"nameserver {gateway}\noptions timeout:2\n")
            for j, (addr, br) in enumerate(legs):
                outer = f"cv{tag}v{i}{j}"
                _run(*h, "link", "add", outer, "type", "veth", "peer", "name", f"eth{j}")
                _run(*h, "link", "set", f"eth{j}", "netns", ns)
                _run(*h, "link", "set", outer, "master", br, "up")
                _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", f"eth{j}")
                _run("ip", "-n", ns, "link", "set", f"eth{j}", "up")
            _run("ip", "-n", ns, "route", "add", "default", "via", gateway)
        _setns(f"/var/run/netns/{t.host}")
        yield t
    finally:
        _setns_fd(old_ns)
        os.close(old_ns)
        for ns in namespaces:
            _run("ip", "netns", "del", ns, check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


def _setns_fd(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns back failed")


@pytest.fixture
def service(topo: Topo) -> Iterator[tuple[DnsService, MemoryStore]]:
    store = MemoryStore(SystemClock())
    put_network(store, "vnet", "10.89.0.0/24")
    put_network(store, "back", "10.90.0.0/24")
    put_endpoint(store, "vnet", "web", "10.89.0.4", container_id="cweb", services=["web:80"])
    put_endpoint(store, "back", "web", "10.90.0.4", container_id="cweb")
    put_endpoint(store, "vnet", "redis", "10.89.0.3", aliases=["cache"])
    put_endpoint(store, "back", "db", "10.90.0.5")
    stub = StubUpstream("127.0.0.1", {"outside.test": [ipaddress.ip_address("192.0.2.1")]})
    cfg = DnsConfig(upstreams=(Upstream(stub.address, stub.port),), upstream_timeout=0.5)
    hub = WatchHub(store)
    hub.start()
    svc = DnsService(store, SystemClock(), cfg, hub=hub)
    svc.start()  # in the test's host namespace: 127.0.0.1:8600 there
    svc.set_network_listeners(
        {"vnet": [ipaddress.ip_address("10.89.0.1")], "back": [ipaddress.ip_address("10.90.0.1")]}
    )
    yield svc, store
    svc.stop()
    hub.stop()
    stub.close()
    store.close()


def test_glibc_in_a_container_resolves_names_of_its_networks(
    topo: Topo, service: tuple[DnsService, MemoryStore]
) -> None:
    assert topo.getent("web", "redis") == ["10.89.0.3"]
    assert topo.getent("web", "db") == ["10.90.0.5"]  # web is on back too
    assert topo.getent("web", "cache.vnet") == ["10.89.0.3"]
    assert topo.getent("redis", "web") == ["10.89.0.4"]
    assert topo.getent("redis", "outside.test") == ["192.0.2.1"]  # forwarded upstream
    code = "import socket; print(socket.getaddrinfo('redis', 6379)[0][4][0])"
    out = topo.in_ns("web", sys.executable, "-S", "-c", code)
    assert out.stdout.strip() == "10.89.0.3", out.stderr


def test_names_of_other_networks_stay_hidden(
    topo: Topo, service: tuple[DnsService, MemoryStore]
) -> None:
    assert topo.getent("redis", "db") == []
    assert "NXDOMAIN" in topo.dig("redis", "@10.89.0.1", "db.back.cove")
    assert topo.getent("db", "redis") == []


def test_source_on_none_of_the_listeners_networks_is_refused(
    topo: Topo, service: tuple[DnsService, MemoryStore]
) -> None:
    # db (on back) asks vnet's gateway: routed to the host, but not a member.
    assert "status: REFUSED" in topo.dig("db", "@10.89.0.1", "redis")
    assert "status: NOERROR" in topo.dig("db", "@10.90.0.1", "db")


def test_ptr_srv_and_tcp_from_a_container(
    topo: Topo, service: tuple[DnsService, MemoryStore]
) -> None:
    assert "redis.vnet." in topo.dig("web", "@10.89.0.1", "+short", "-x", "10.89.0.3")
    srv = topo.dig("redis", "@10.89.0.1", "+tcp", "+short", "_web._tcp.service.cove", "SRV")
    assert srv.split()[:3] == ["1", "1", "80"]


def test_new_container_resolves_promptly(
    topo: Topo, service: tuple[DnsService, MemoryStore]
) -> None:
    _, store = service
    assert topo.getent("web", "late") == []
    put_endpoint(store, "vnet", "late", "10.89.0.9")
    deadline = time.monotonic() + 5
    while topo.getent("web", "late") != ["10.89.0.9"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
