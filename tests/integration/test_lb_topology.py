"""Topology helpers shared by the VIP and policy integration tests (no tests
here): a bridge in the test's host namespace, "containers" plugged into it,
servers that answer with their own name, and a client that makes many
connections from inside a namespace in one process."""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from netutil import plugged, sh

SERVER = r"""
import socket, sys, threading
name, port = sys.argv[1], int(sys.argv[2])
socks = []
for fam, addr in ((socket.AF_INET, '0.0.0.0'),):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(512)
    socks.append(s)
print('ready', flush=True)
def serve(c):
    try:
        c.sendall((name + ' ' + c.getpeername()[0] + '\n').encode())
        c.recv(1)
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = socks[0].accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

CLIENT = r"""
import json, socket, sys, time
addr, port, n, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
out = {}
peers = {}
for _ in range(n):
    t0 = time.monotonic()
    try:
        c = socket.create_connection((addr, port), timeout=timeout)
        data = b''
        while not data.endswith(b'\n'):
            chunk = c.recv(200)
            if not chunk:
                break
            data += chunk
        c.close()
        name, _, peer = data.decode().strip().partition(' ')
        key = name or 'FAIL empty reply'
        peers[peer] = peers.get(peer, 0) + 1
    except ConnectionRefusedError:
        key = 'FAIL refused'
    except socket.timeout:
        key = 'FAIL timeout'
    except OSError as e:
        key = 'FAIL ' + (e.strerror or str(e))
    out[key] = out.get(key, 0) + 1
    if pause:
        time.sleep(pause)
print(json.dumps({'results': out, 'peers': peers, 'elapsed': time.monotonic() - t0}))
"""


def need_br_netfilter() -> None:
    if not Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
        pytest.skip("br_netfilter is not loaded (modprobe br_netfilter)")


@dataclass
class Topo:
    """A bridge ``bridge`` with gateway ``gw`` on 10.x.y.0/24 in the current
    (host) namespace; ``add`` plugs in containers."""

    bridge: str
    prefix: str
    stack: contextlib.ExitStack
    containers: dict[str, str] = field(default_factory=dict)  # name -> netns
    addresses: dict[str, str] = field(default_factory=dict)  # name -> IP

    @property
    def gw(self) -> str:
        return f"{self.prefix}.1"

    def add(self, name: str, host: int) -> str:
        addr = f"{self.prefix}.{host}"
        ns = self.stack.enter_context(plugged(self.bridge, f"{addr}/24", self.gw))
        self.containers[name] = ns
        self.addresses[name] = addr
        # A container reaching its own VIP is DNATed back to the port it came
        # from; br_netfilter bridges it there only with hairpin mode (as
        # kubelet's hairpin-veth does).
        for link in json.loads(sh("ip", "-j", "link", "show", "master", self.bridge).stdout):
            sh("ip", "link", "set", link["ifname"], "type", "bridge_slave", "hairpin", "on")
        return ns

    def serve(self, name: str, port: int, reply: str | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.containers[name], sys.executable, "-c", SERVER,
             reply or name, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        self.stack.callback(_kill, proc)
        return proc


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()


@contextlib.contextmanager
def topology(second_octet: int = 77) -> Iterator[Topo]:
    """Build in the current namespace (the test's ``hostns``)."""
    need_br_netfilter()
    bridge = "cvb" + secrets.token_hex(4)
    prefix = f"10.{second_octet}.0"
    sh("ip", "link", "add", bridge, "type", "bridge")
    try:
        sh("ip", "addr", "add", f"{prefix}.1/24", "dev", bridge)
        sh("ip", "link", "set", bridge, "up")
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
        with contextlib.ExitStack() as stack:
            yield Topo(bridge, prefix, stack)
    finally:
        sh("ip", "link", "del", bridge, check=False)


def run_client(
    ns: str | None, addr: str, port: int, n: int, timeout: float = 2.0, pause: float = 0.0
) -> dict[str, object]:
    """``n`` connections from ``ns`` (None: the host namespace)."""
    cmd = [sys.executable, "-c", CLIENT, addr, str(port), str(n), str(timeout), str(pause)]
    if ns is not None:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    return dict(json.loads(res.stdout))


def start_client(
    ns: str, addr: str, port: int, n: int, timeout: float = 2.0, pause: float = 0.0
) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-c", CLIENT, addr, str(port), str(n), str(timeout), str(pause)]
    return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=subprocess.PIPE, text=True)


def results(data: dict[str, object]) -> Counter[str]:
    got = data["results"]
    assert isinstance(got, dict)
    return Counter({str(k): int(v) for k, v in got.items()})
