"""Overlay datapath on a real kernel: three host namespaces on a fabric
bridge, the overlay reconciler of each driving a real ``NetlinkDatapath``,
containers as namespaces veth'd to the overlay bridge by hand. Checks real
traffic across hosts: no-fragment pings at the MTU, UDP datagrams, TCP;
that nothing floods; and that the VXLAN port takes packets only from nodes.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import nsutil
from cove.clock import ManualClock
from cove.datapath.base import FdbEntry, NeighEntry, vxlan_name
from cove.datapath.netlink import NetlinkDatapath
from cove.model import ENDPOINTS, Endpoint, Network
from cove.network.overlay import CLUSTER_NODES, OverlayReconciler
from cove.network.service import NetworkService
from cove.network.spec import NetworkSpec
from cove.store.memory import MemoryStore

pytestmark = pytest.mark.root

FABRIC = "198.51.100."  # TEST-NET-2, only inside the test's namespaces


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return nsutil.run(*args, check=check)


@dataclass
class Host:
    name: str  # its namespace
    index: int
    address: str
    dp: NetlinkDatapath | None = None
    rec: OverlayReconciler | None = None

    def sync(self) -> None:
        assert self.rec is not None
        with nsutil.entered(self.name):
            self.rec.run_once()
        assert self.rec.errors == {}


class World:
    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.stack = stack
        self.fabric = stack.enter_context(nsutil.namespace("cvtf"))
        sh("ip", "-n", self.fabric, "link", "add", "fab", "type", "bridge")
        sh("ip", "-n", self.fabric, "link", "set", "fab", "up")
        self.store = MemoryStore(ManualClock())
        self.hosts: dict[str, Host] = {}
        self.containers: dict[str, str] = {}  # endpoint id -> namespace

    def host(self, i: int) -> Host:
        ns = self.stack.enter_context(nsutil.namespace("cvth"))
        addr = f"{FABRIC}{10 + i}"
        port = nsutil.unique("cvtp")
        sh("ip", "link", "add", port, "netns", self.fabric, "type", "veth", "peer", "name",
           "uplink", "netns", ns)  # fmt: skip
        sh("ip", "-n", self.fabric, "link", "set", port, "master", "fab", "up")
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.uplink.disable_ipv6=1")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "uplink")
        sh("ip", "-n", ns, "link", "set", "uplink", "up")
        host = Host(ns, i, addr)
        with nsutil.entered(ns):
            host.dp = NetlinkDatapath()
            host.dp.enable_forwarding()
        self.stack.callback(host.dp.close)
        host.rec = OverlayReconciler(self.store, host.dp, f"h{i}", addr, interval=3600)
        self.hosts[f"h{i}"] = host
        return host

    def node(self, name: str, up: bool = True) -> None:
        if up:
            data = {"name": name, "advertise": self.hosts[name].address}
            self.store.put(CLUSTER_NODES + name, json.dumps(data))
        else:
            self.store.delete(CLUSTER_NODES + name)

    def endpoint(self, net: Network, n: int, node: str, mac: str | None = None) -> Endpoint:
        ep = Endpoint(
            id=f"{n:012x}",
            network=net.name,
            container_id=f"c{n}",
            container_name=f"c{n}",
            interface="eth0",
            host_veth=f"cv{n:010x}",
            mac=mac or f"02:42:0a:cb:00:{n:02x}",
            ipv4=ipaddress.IPv4Address(f"10.203.0.{n}"),
            ipv6=ipaddress.IPv6Address(f"fd00:203::{n:x}") if net.ipv6 else None,
        )
        self.store.put(f"{ENDPOINTS}{net.name}/{ep.id}", json.dumps({**ep.to_json(), "node": node}))
        return ep

    def container(self, net: Network, ep: Endpoint, host: Host) -> str:
        """A namespace veth'd into ``host``'s overlay bridge, as the runtime
        would make it (the bridge made on demand first)."""
        assert host.rec is not None
        with nsutil.entered(host.name):
            host.rec.prepare_bridge(net.bridge)
        ns = self.stack.enter_context(nsutil.namespace("cvtc"))
        veth = nsutil.unique("cvtv")
        sh("ip", "-n", host.name, "link", "add", veth, "mtu", str(net.mtu), "type", "veth",
           "peer", "name", "eth0", "netns", ns)  # fmt: skip
        sh("ip", "-n", host.name, "link", "set", veth, "master", net.bridge, "up")
        sh("ip", "-n", ns, "link", "set", "eth0", "address", ep.mac, "mtu", str(net.mtu), "up")
        sh("ip", "-n", ns, "addr", "add", f"{ep.ipv4}/24", "dev", "eth0")
        sh("ip", "-n", ns, "route", "add", "default", "via", "10.203.0.1")
        if ep.ipv6 is not None:
            sh("ip", "-n", ns, "addr", "add", f"{ep.ipv6}/64", "dev", "eth0", "nodad")
        self.containers[ep.id] = ns
        return ns


@pytest.fixture
def world() -> Iterator[World]:
    if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0":
        pytest.skip("needs root")
    with contextlib.ExitStack() as stack:
        yield World(stack)


def in_ns(ns: str, *argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=check)


def ping(ns: str, dst: str, size: int = 56, count: int = 1) -> subprocess.CompletedProcess[str]:
    return in_ns(ns, "ping", "-n", "-c", str(count), "-W", "2", "-M", "do", "-s", str(size), dst)


_UDP_RECV = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9999)); s.settimeout(5)
print(sys.stdin.readline(), flush=True) if False else None
got = []
for _ in range(int(sys.argv[1])):
    try:
        got.append(len(s.recv(65535)))
    except socket.timeout:
        break
print(" ".join(map(str, got)))
"""

_UDP_SEND = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
for n in map(int, sys.argv[2:]):
    try:
        s.sendto(b"x" * n, (sys.argv[1], 9999)); print("sent", n)
    except OSError as e:
        print("error", n, e.strerror)
    time.sleep(0.05)
"""

_TCP_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9998)); s.listen(1); s.settimeout(10)
c, _ = s.accept(); data = b""
while len(data) < 200000:
    chunk = c.recv(65536)
    if not chunk: break
    data += chunk
c.sendall(str(len(data)).encode()); c.close()
"""

_TCP_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 9998), timeout=10)
c.sendall(b"y" * 200000); c.shutdown(socket.SHUT_WR); print(c.recv(100).decode())
"""


def count_vxlan(host: Host) -> None:
    """A counter of VXLAN packets arriving at ``host`` (a table of the
    test's own, in the host's namespace only)."""
    rules = (
        "add table inet cvt_count; "
        "add chain inet cvt_count c { type filter hook prerouting priority -400; }; "
        "add rule inet cvt_count c udp dport 4789 counter"
    )
    sh("ip", "netns", "exec", host.name, "nft", rules)


def vxlan_packets(host: Host) -> int:
    out = sh("ip", "netns", "exec", host.name, "nft", "-j", "list", "table", "inet", "cvt_count")
    for obj in json.loads(out.stdout)["nftables"]:
        for expr in obj.get("rule", {}).get("expr", []):
            if "counter" in expr:
                return int(expr["counter"]["packets"])
    raise AssertionError("no counter")


def two_hosts(world: World) -> tuple[Network, Host, Host, Host, Endpoint, Endpoint]:
    svc = NetworkService(world.store, ManualClock())
    spec = NetworkSpec.from_json({"name": "ov", "driver": "overlay", "subnets": ["10.203.0.0/24"]})
    net, _ = svc.create(spec)
    h1, h2, h3 = world.host(1), world.host(2), world.host(3)
    for h in ("h1", "h2", "h3"):
        world.node(h)
    a = world.endpoint(net, 2, "h1")
    b = world.endpoint(net, 3, "h2")
    world.container(net, a, h1)
    world.container(net, b, h2)
    for h in (h1, h2, h3):
        h.sync()
    return net, h1, h2, h3, a, b


def test_traffic_crosses_hosts_at_the_overlay_mtu(world: World) -> None:
    net, h1, h2, h3, a, b = two_hosts(world)
    c1, c2 = world.containers[a.id], world.containers[b.id]
    assert net.mtu == 1450
    ok = ping(c1, "10.203.0.3")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The biggest no-fragment ping the overlay MTU allows crosses; a
    # 1,472-byte one fails at once with "message too long", never vanishes.
    full = ping(c1, "10.203.0.3", size=1450 - 28)
    assert full.returncode == 0, full.stdout + full.stderr
    big = ping(c1, "10.203.0.3", size=1472)
    assert big.returncode != 0
    assert "message too long" in (big.stdout + big.stderr).lower()
    # ARP was answered on h1 by the VXLAN proxy, from the store's entries.
    neigh = json.loads(sh("ip", "-n", c1, "-j", "neigh", "show", "10.203.0.3").stdout)
    assert neigh and neigh[0]["lladdr"] == b.mac
    # UDP datagrams up to the MTU arrive whole; a bigger one is refused
    # to the sender, not lost on the way.
    recv = subprocess.Popen(
        ["ip", "netns", "exec", c2, "python3", "-c", _UDP_RECV, "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        import time

        time.sleep(0.3)
        sent = in_ns(c1, "python3", "-c", _UDP_SEND, "10.203.0.3", "100", "1422", "1472")
        out, _ = recv.communicate(timeout=10)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    assert "error 1472 Message too long" in sent.stdout, sent.stdout
    assert out.split() == ["100", "1422"]
    # TCP, both ways.
    server = subprocess.Popen(
        ["ip", "netns", "exec", c1, "python3", "-c", _TCP_SERVER], stdout=subprocess.PIPE
    )
    try:
        time.sleep(0.3)
        got = in_ns(c2, "python3", "-c", _TCP_CLIENT, "10.203.0.2")
    finally:
        server.kill()
        server.wait()
    assert got.stdout.strip() == "200000", got.stderr
    # h3 has no endpoint on the network: it holds nothing for it.
    assert sh("ip", "-n", h3.name, "-j", "link", "show", "type", "vxlan").stdout.strip() in (
        "",
        "[]",
    )
    assert net.bridge not in sh("ip", "-n", h3.name, "link", "show").stdout
    assert "cove_overlay" not in sh("ip", "netns", "exec", h3.name, "nft", "list", "tables").stdout


def test_nothing_floods_to_other_hosts(world: World) -> None:
    _net, _h1, h2, h3, a, _b = two_hosts(world)
    c1 = world.containers[a.id]
    count_vxlan(h2)
    count_vxlan(h3)
    assert ping(c1, "10.203.0.3").returncode == 0
    assert vxlan_packets(h2) == 1  # the counter counts: the echo request
    before = vxlan_packets(h2), vxlan_packets(h3)
    # An address nobody holds: no ARP broadcast leaves h1, no unknown
    # unicast either (a static neighbour for a MAC nobody has).
    assert ping(c1, "10.203.0.99", count=2).returncode != 0
    sh("ip", "-n", c1, "neigh", "replace", "10.203.0.98", "lladdr", "02:42:0a:cb:00:62",
       "dev", "eth0")  # fmt: skip
    assert ping(c1, "10.203.0.98", count=2).returncode != 0
    assert (vxlan_packets(h2), vxlan_packets(h3)) == before


def test_vxlan_port_takes_packets_only_from_nodes(world: World) -> None:
    net, _h1, h2, h3, _a, b = two_hosts(world)
    # h3 plays a host that is not (or no longer) a node: it hand-builds the
    # network's VXLAN segment and sends straight to the container on h2.
    rogue_mac = "02:42:0a:cb:00:32"
    assert net.vni is not None
    sh("ip", "-n", h3.name, "link", "add", "rogue", "address", rogue_mac, "mtu", "1450",
       "type", "vxlan", "id", str(net.vni), "local", h3.address, "dstport", "4789",
       "nolearning")  # fmt: skip
    sh("ip", "-n", h3.name, "addr", "add", "10.203.0.50/24", "dev", "rogue")
    sh("ip", "-n", h3.name, "link", "set", "rogue", "up")
    sh("ip", "netns", "exec", h3.name, "bridge", "fdb", "append", b.mac, "dev", "rogue",
       "dst", h2.address, "self", "permanent")  # fmt: skip
    sh("ip", "-n", h3.name, "neigh", "replace", "10.203.0.3", "lladdr", b.mac, "dev", "rogue")
    # The return path exists on h2, as it would for a legitimate peer.
    vx = vxlan_name(net.id)
    assert h2.dp is not None
    with nsutil.entered(h2.name):
        h2.dp.update_fdb(vx, [FdbEntry(rogue_mac, ipaddress.ip_address(h3.address))], [])
        h2.dp.update_neigh(vx, [NeighEntry(ipaddress.ip_address("10.203.0.50"), rogue_mac)], [])
    world.node("h3", up=False)
    h2.sync()  # h3 is no longer a node: the filter drops its packets...
    with nsutil.entered(h2.name):  # (the pass removed the hand-made return path: put it back)
        h2.dp.update_fdb(vx, [FdbEntry(rogue_mac, ipaddress.ip_address(h3.address))], [])
        h2.dp.update_neigh(vx, [NeighEntry(ipaddress.ip_address("10.203.0.50"), rogue_mac)], [])
    assert ping(h3.name, "10.203.0.3", count=2).returncode != 0
    # ...and it is the filter that does: without cove's table they pass.
    sh("ip", "netns", "exec", h2.name, "nft", "delete", "table", "inet", "cove_overlay")
    assert ping(h3.name, "10.203.0.3").returncode == 0
    h2.sync()  # the table comes back
    assert "cove_overlay" in sh("ip", "netns", "exec", h2.name, "nft", "list", "tables").stdout


def test_last_endpoint_gone_removes_everything_and_restart_leaks_nothing(world: World) -> None:
    net, h1, h2, _h3, a, b = two_hosts(world)
    vx = vxlan_name(net.id)
    # A restarted agent (a new reconciler, same kernel) changes nothing.
    assert h1.dp is not None
    fresh = OverlayReconciler(world.store, h1.dp, "h1", h1.address, interval=3600)
    with nsutil.entered(h1.name):
        assert fresh.run_once() != []  # only the port filter's digest is new to it
        assert fresh.run_once() == []
    fdb = sh("ip", "netns", "exec", h1.name, "bridge", "-j", "fdb", "show", "dev", vx).stdout
    assert b.mac in fdb and h2.address in fdb
    world.store.delete(f"{ENDPOINTS}{net.name}/{a.id}")
    sh("ip", "netns", "del", world.containers[a.id])
    h1.sync()
    links = sh("ip", "-n", h1.name, "link", "show").stdout
    assert vx not in links and net.bridge not in links
    assert "cove_overlay" not in sh("ip", "netns", "exec", h1.name, "nft", "list", "tables").stdout
    h2.sync()
    fdb = sh("ip", "netns", "exec", h2.name, "bridge", "-j", "fdb", "show", "dev", vx).stdout
    assert a.mac not in fdb


def test_ipv6_crosses_hosts_with_nd_answered_locally(world: World) -> None:
    svc = NetworkService(world.store, ManualClock())
    body = {"name": "ov6", "driver": "overlay", "subnets": ["10.203.0.0/24", "fd00:203::/64"]}
    net, _ = svc.create(NetworkSpec.from_json(body))
    h1, h2 = world.host(1), world.host(2)
    world.node("h1")
    world.node("h2")
    a = world.endpoint(net, 2, "h1")
    b = world.endpoint(net, 3, "h2")
    c1 = world.container(net, a, h1)
    world.container(net, b, h2)
    h1.sync()
    h2.sync()
    res = in_ns(
        c1, "ping", "-6", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1402", "fd00:203::3"
    )
    assert res.returncode == 0, res.stdout + res.stderr
    big = in_ns(
        c1, "ping", "-6", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1452", "fd00:203::3"
    )
    assert big.returncode != 0 and "message too long" in (big.stdout + big.stderr).lower()
    neigh = json.loads(sh("ip", "-n", c1, "-6", "-j", "neigh", "show", "fd00:203::3").stdout)
    assert neigh and neigh[0]["lladdr"] == b.mac
