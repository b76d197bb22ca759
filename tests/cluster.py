"""A three-host cluster in network namespaces, for multi-host tests.

Topology (every address lives inside namespaces this fixture made)::

    fabric namespace: bridge "fabric" 192.0.2.1/24, etcd on 192.0.2.1:2379
        |-- veth --> host h1: eth0 192.0.2.11/24, default route via 192.0.2.1
        |-- veth --> host h2: eth0 192.0.2.12/24
        '-- veth --> host h3: eth0 192.0.2.13/24

Host number ``n`` (1-based, named ``h<n>``) has the address
``192.0.2.(10+n)``; ``cluster.hosts[n - 1]`` is its ``Host``. Each host's
agent is a real ``cove agent`` started with ``nsenter --net=`` (so it keeps
the test's mount namespace) and its own state directory, socket and ports,
with ``--store etcd://192.0.2.1:2379 --node-name h<n> --advertise
192.0.2.(10+n)``. The test thread stays where it is: use ``Host.cli`` /
``Host.ok`` (over the agent's socket), ``Host.api`` (the native API over the
socket, anything else over TCP from inside the host) and ``Host.ip`` (``ip``
in the host namespace).

Everything is torn down even when the test fails: containers are removed,
agents stopped, their supervisors and containers killed, etcd stopped, and
the namespaces deleted with whatever still runs in them.

    def test_x(cluster3: Cluster) -> None:
        h1, h2, h3 = cluster3.hosts
        h1.ok("network", "create", "n1", "--subnet", "10.89.7.0/24")
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

import nsutil
from agentproc import AgentProc
from cove.agent.teardown import teardown
from etcd_fixture import ETCD

FABRIC_ADDRESS = "192.0.2.1"
PREFIX = 24
ETCD_PORT = 2379


def host_address(number: int) -> str:
    """The fabric address of host ``number`` (1-based)."""
    return f"192.0.2.{10 + number}"


class FabricEtcd:
    """One etcd member inside the fabric namespace, listening on the
    fabric address only (every host reaches it over its veth)."""

    def __init__(self, fabric: str) -> None:
        self.fabric = fabric
        self.data_dir = tempfile.mkdtemp(prefix="cove-cluster-etcd-")
        self.url = f"http://{FABRIC_ADDRESS}:{ETCD_PORT}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def store_url(self) -> str:
        return f"etcd://{FABRIC_ADDRESS}:{ETCD_PORT}"

    def start(self, timeout: float = 20.0) -> None:
        peer = f"http://{FABRIC_ADDRESS}:{ETCD_PORT + 1}"
        log_path = os.path.join(self.data_dir, "etcd.log")
        with open(log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                [
                    "nsenter", f"--net=/run/netns/{self.fabric}",
                    ETCD,
                    "--name", "fabric",
                    "--data-dir", os.path.join(self.data_dir, "data"),
                    "--listen-client-urls", self.url,
                    "--advertise-client-urls", self.url,
                    "--listen-peer-urls", peer,
                    "--initial-advertise-peer-urls", peer,
                    "--initial-cluster", f"fabric={peer}",
                    "--initial-cluster-state", "new",
                    "--log-level", "warn",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                with open(log_path, errors="replace") as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"etcd did not become healthy:\n{tail}")
            time.sleep(0.05)

    def healthy(self) -> bool:
        with nsutil.entered(self.fabric):
            try:
                conn = http.client.HTTPConnection(FABRIC_ADDRESS, ETCD_PORT, timeout=1)
                try:
                    conn.request("GET", "/health")
                    resp = conn.getresponse()
                    return resp.status == 200 and b'"true"' in resp.read()
                finally:
                    conn.close()
            except OSError:
                return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.data_dir, ignore_errors=True)


@dataclass
class Host:
    """One host: its namespace, its fabric address and its agent."""

    number: int
    netns: str
    agent: AgentProc

    @property
    def name(self) -> str:
        return f"h{self.number}"

    @property
    def address(self) -> str:
        return host_address(self.number)

    def start(self, *extra: str, timeout: float = 30.0) -> None:
        """Start (or restart) this host's agent inside its namespace."""
        prefix = ("nsenter", f"--net=/run/netns/{self.netns}")
        self.agent.start(*extra, timeout=timeout, prefix=prefix)

    def stop(self) -> int | None:
        return self.agent.stop()

    def kill9(self) -> None:
        self.agent.kill9()

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.agent.cli(*args, timeout=timeout)

    def ok(self, *args: str) -> str:
        return self.agent.ok(*args)

    def api(self, method: str, path: str, json_body: Any = None) -> tuple[int, Any]:
        with nsutil.entered(self.netns):
            return self.agent.api(method, path, json_body)

    def ip(self, *args: str) -> str:
        """``ip -n <this host> ARGS``; its output."""
        return nsutil.run("ip", "-n", self.netns, *args).stdout

    def container_netns(self) -> list[str]:
        """Container ids that have a namespace file on this host."""
        folder = self.agent.state_dir / "run" / "netns"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def veths(self) -> list[str]:
        """Names of cove's host-side veths (``cv...``) in this host."""
        out = self.ip("-o", "link", "show", "type", "veth")
        names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
        return sorted(n for n in names if n.startswith("cv"))


@dataclass
class Cluster:
    fabric: str
    etcd: FabricEtcd
    hosts: list[Host]

    @property
    def store_url(self) -> str:
        return self.etcd.store_url

    def host(self, number: int) -> Host:
        """Host ``number`` (1-based: ``host(1)`` is h1)."""
        return self.hosts[number - 1]

    def etcd_get(self, key: str) -> bytes | None:
        """A key's value read straight from etcd (with etcdctl-free HTTP)."""
        import base64
        import json

        body = json.dumps({"key": base64.b64encode(key.encode()).decode()})
        with nsutil.entered(self.fabric):
            conn = http.client.HTTPConnection(FABRIC_ADDRESS, ETCD_PORT, timeout=5)
            try:
                conn.request("POST", "/v3/kv/range", body=body)
                data = json.loads(conn.getresponse().read())
            finally:
                conn.close()
        kvs = data.get("kvs") or []
        return base64.b64decode(kvs[0]["value"]) if kvs else None


def _link_host(fabric: str, host: str, number: int) -> None:
    run = nsutil.run
    port = f"fp{number}"
    run("ip", "-n", fabric, "link", "add", port, "type", "veth", "peer", "name", "eth0",
        "netns", host)  # fmt: skip
    run("ip", "-n", fabric, "link", "set", port, "master", "fabric", "up")
    run("ip", "-n", host, "addr", "add", f"{host_address(number)}/{PREFIX}", "dev", "eth0")
    run("ip", "-n", host, "link", "set", "eth0", "up")
    # A default route into the fabric, which routes nowhere: the agent
    # finds its advertise address the way it would on a real host.
    run("ip", "-n", host, "route", "add", "default", "via", FABRIC_ADDRESS)


def _cleanup_agent(host: Host) -> None:
    agent = host.agent
    if agent.proc is not None and agent.proc.poll() is None:
        res = agent.cli("ps", "-a", "--format", "json", timeout=30)
        if res.returncode == 0:
            import json

            for c in json.loads(res.stdout or "[]"):
                if c.get("node", host.name) == host.name:
                    agent.cli("rm", "-f", c["name"], timeout=30)
        agent.cli("network", "prune", timeout=30)
    agent.stop()
    teardown(agent.state_dir / "run")


@contextlib.contextmanager
def make_cluster(
    workdir: Path, count: int = 3, *extra: str, start: bool = True
) -> Iterator[Cluster]:
    """A fabric, one etcd and ``count`` hosts with an agent each (started
    unless ``start`` is false); ``extra`` flags go to every agent."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not os.path.exists(ETCD):
        pytest.skip("etcd-server is not installed")
    with contextlib.ExitStack() as stack:
        fabric = stack.enter_context(nsutil.namespace("cvf"))
        nsutil.run("ip", "-n", fabric, "link", "add", "fabric", "type", "bridge")
        nsutil.run("ip", "-n", fabric, "addr", "add", f"{FABRIC_ADDRESS}/{PREFIX}", "dev", "fabric")
        nsutil.run("ip", "-n", fabric, "link", "set", "fabric", "up")
        hosts: list[Host] = []
        for number in range(1, count + 1):
            netns = stack.enter_context(nsutil.namespace("cvh"))
            _link_host(fabric, netns, number)
            folder = workdir / f"h{number}"
            folder.mkdir(parents=True, exist_ok=True)
            hosts.append(Host(number, netns, AgentProc(netns, folder)))
        etcd = FabricEtcd(fabric)
        stack.callback(etcd.stop)
        etcd.start()
        for host in hosts:
            host.agent.extra += [
                "--store", etcd.store_url,
                "--node-name", host.name,
                "--advertise", host.address,
                *extra,
            ]  # fmt: skip
            # Stopped (in reverse) before etcd and the namespaces go.
            stack.callback(_cleanup_agent, host)
        cluster = Cluster(fabric, etcd, hosts)
        if start:
            for host in hosts:
                host.start()
        yield cluster


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[Cluster]:
    """Three hosts h1..h3 on one etcd, their agents running."""
    with make_cluster(tmp_path, 3) as cluster:
        yield cluster


T = TypeVar("T")


def wait_for(fn: Callable[[], T | None], deadline: float = 20.0, what: str = "") -> T:
    """``fn()`` once it is truthy, polled for ``deadline`` seconds."""
    end = time.monotonic() + deadline
    last: T | None = None
    while time.monotonic() < end:
        last = fn()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what or fn}: last {last!r}")


def members(host: Host) -> dict[str, dict[str, Any]]:
    """The cluster's nodes by name, as ``host``'s API lists them."""
    status, body = host.api("GET", "/api/members")
    assert status == 200, body
    return {m["name"]: m for m in body}
