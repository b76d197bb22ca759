"""Small pieces of topology for integration tests: a namespace plugged into a
bridge like a container, an "outside" namespace behind the host, and TCP
probes run inside namespaces. Every name is unique and everything is removed
by the context managers, even when a test fails."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
from collections.abc import Iterator

import nsutil

SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print('ready', flush=True)
while True:
    c, peer = s.accept()
    c.sendall((peer[0] + '\\n').encode())
    c.close()
"""

CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print(c.recv(200).decode().strip())
except OSError as e:
    print('FAIL', e)
    sys.exit(1)
"""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


@contextlib.contextmanager
def plugged(bridge: str, address: str, gateway: str | None) -> Iterator[str]:
    """A namespace with eth0 = ``address`` (CIDR) plugged into ``bridge`` of
    the current (host) namespace, default route via ``gateway``."""
    host_if = "cvt" + secrets.token_hex(5)
    with nsutil.namespace("cvc") as ns:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        try:
            sh("ip", "link", "set", host_if, "master", bridge, "up")
            sh("ip", "-n", ns, "addr", "add", address, "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            if gateway:
                sh("ip", "-n", ns, "route", "add", "default", "via", gateway)
            yield ns
        finally:
            sh("ip", "link", "del", host_if, check=False)


@contextlib.contextmanager
def outside(host_addr: str = "198.51.100.1/24", out_addr: str = "198.51.100.2/24") -> Iterator[str]:
    """An "outside world" namespace reached through a veth from the host."""
    host_if = "cvo" + secrets.token_hex(5)
    with nsutil.namespace("cvo") as ns:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "up0", "netns", ns)
        try:
            sh("ip", "addr", "add", host_addr, "dev", host_if)
            sh("ip", "link", "set", host_if, "up")
            sh("ip", "-n", ns, "addr", "add", out_addr, "dev", "up0")
            sh("ip", "-n", ns, "link", "set", "up0", "up")
            yield ns
        finally:
            sh("ip", "link", "del", host_if, check=False)


@contextlib.contextmanager
def tcp_server(ns: str, address: str, port: int) -> Iterator[None]:
    """A TCP server in ``ns`` that answers each connection with the peer's
    address, so a test sees whether NAT happened."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, address, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.kill()
        proc.wait()


def connect(ns: str, address: str, port: int, timeout: float = 2.0) -> str | None:
    """Connect from ``ns``; returns what the server saw as our address, or
    None when the connection failed."""
    res = sh(
        "ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, address, str(port), str(timeout),
        check=False,
    )  # fmt: skip
    return res.stdout.strip() if res.returncode == 0 else None
