"""Overlay networks end to end: three hosts on one etcd (tests/cluster.py),
containers run with `cove run` on h1 and h2 reach each other by name over
TCP and UDP, across the VXLAN overlay; h3, without an endpoint, holds
nothing for the network."""

from __future__ import annotations

import json
import sys
import time
import urllib.request

import pytest

import nsutil
from cluster import Cluster, Host

pytestmark = [pytest.mark.root, pytest.mark.etcd]

_SERVER = """
import socket, threading
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 9999))
def udp():
    while True:
        data, peer = u.recvfrom(65535); u.sendto(b"%d" % len(data), peer)
threading.Thread(target=udp, daemon=True).start()
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 8080)); t.listen(8)
while True:
    c, _ = t.accept(); data = b""
    while True:
        chunk = c.recv(65536)
        if not chunk: break
        data += chunk
    c.sendall(b"%d" % len(data)); c.close()
"""

_CLIENT = """
import socket, sys
name = sys.argv[1]
c = socket.create_connection((name, 8080), timeout=5)
c.sendall(b"y" * 100000); c.shutdown(socket.SHUT_WR)
print("tcp", c.recv(100).decode())
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(3)
u.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
for n in (100, 1422):
    u.sendto(b"x" * n, (name, 9999)); print("udp", u.recv(100).decode())
"""


def wait_for(what: str, check: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def address(host: Host, container: str) -> str:
    data = json.loads(host.ok("inspect", container))
    item = data[0] if isinstance(data, list) else data
    return str(next(iter(item["endpoints"].values()))["ipv4"])


def vxlans(host: Host) -> list[str]:
    return [link["ifname"] for link in json.loads(host.ip("-j", "link", "show", "type", "vxlan"))]


def watch_streams(host: Host) -> int:
    """The etcd watch streams the host's agent follows (its /metrics)."""
    with nsutil.entered(host.netns):
        url = f"http://127.0.0.1:{host.agent.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
    (line,) = [x for x in text.splitlines() if x.startswith("cove_watch_streams ")]
    return int(float(line.split()[1]))


def test_containers_on_two_hosts_reach_each_other_by_name(cluster3: Cluster) -> None:
    h1, h2, h3 = cluster3.hosts
    h1.ok("network", "create", "ov", "--driver", "overlay", "--subnet", "10.203.0.0/24")
    net = json.loads(h2.ok("network", "inspect", "ov"))[0]
    assert net["driver"] == "overlay" and net["mtu"] == 1450 and net["vni"] >= 1
    # Bad input on another host: a clear error, exit 5 (conflict), nothing written.
    clash = h2.cli("network", "create", "ov2", "--driver", "overlay", "--subnet", "10.203.0.0/16")
    assert clash.returncode == 5 and "overlaps network ov" in clash.stderr, clash.stderr
    taken = h3.cli("network", "create", "ov3", "--driver", "overlay", "--vni", str(net["vni"]))
    assert taken.returncode == 5 and f"vni {net['vni']} is already used" in taken.stderr
    bad = h3.cli("network", "create", "ov4", "--driver", "overlay", "--vni", "16777216")
    assert bad.returncode == 2 and "out of range" in bad.stderr, bad.stderr
    assert h1.ok("network", "ls", "-q").split() == ["ov"]
    # Nothing on any host before a container is there.
    assert vxlans(h1) == vxlans(h2) == vxlans(h3) == []
    h1.ok("run", "-d", "--name", "api", "--network", "ov", "--", sys.executable, "-c", _SERVER)
    h2.ok("run", "-d", "--name", "web", "--network", "ov", "--", "sleep", "600")
    api = address(h1, "api")
    wait_for(
        "web never resolved api",
        lambda: h2.cli("exec", "web", "--", "getent", "hosts", "api").stdout.split()[:1] == [api],
    )
    # web's host heard of api only once it joined the network: h2 follows
    # ov's endpoints and addresses (two streams more), h3, not on it, does not.
    assert watch_streams(h3) == 10
    assert watch_streams(h1) == watch_streams(h2) == 12
    # The MTU is the overlay's inside the container, and no-fragment pings
    # at it cross; bigger ones fail at once with "message too long".
    inside = json.loads(h2.ok("exec", "web", "--", "ip", "-j", "link", "show", "eth0"))
    assert inside[0]["mtu"] == 1450
    wait_for(
        "no ping across",
        lambda: h2.cli("exec", "web", "--", "ping", "-c1", "-W1", api).returncode == 0,
    )
    full = h2.cli("exec", "web", "--", "ping", "-c1", "-W2", "-M", "do", "-s", "1422", api)
    assert full.returncode == 0, full.stdout + full.stderr
    big = h2.cli("exec", "web", "--", "ping", "-c1", "-W2", "-M", "do", "-s", "1472", api)
    assert big.returncode != 0 and "message too long" in (big.stdout + big.stderr).lower()
    # TCP and UDP by name, across hosts.
    out = h2.ok("exec", "web", "--", sys.executable, "-c", _CLIENT, "api")
    assert out.split("\n")[:3] == ["tcp 100000", "udp 100", "udp 1422"], out
    # Each of h1 and h2 has the network's bridge and VXLAN device; h3 none.
    assert len(vxlans(h1)) == 1 and vxlans(h1) == vxlans(h2)
    assert vxlans(h3) == []
    assert net["bridge"] not in h3.ip("link", "show")
    # The last container gone, its host holds nothing for the network.
    h1.ok("rm", "-f", "api")
    wait_for("h1 kept its VXLAN device", lambda: vxlans(h1) == [])
    assert net["bridge"] not in h1.ip("link", "show")
    wait_for(
        "h2 kept the removed container's entry",
        lambda: "10.203." not in h2.ip("neigh", "show", "dev", vxlans(h2)[0]),
    )


def test_networks_stay_isolated_across_hosts(cluster3: Cluster) -> None:
    h1, h2, _h3 = cluster3.hosts
    h1.ok("network", "create", "ova", "--driver", "overlay", "--subnet", "10.204.0.0/24")
    h1.ok("network", "create", "ovb", "--driver", "overlay", "--subnet", "10.205.0.0/24")
    h1.ok("network", "create", "ovi", "--driver", "overlay", "--internal",
          "--subnet", "10.206.0.0/24")  # fmt: skip
    h1.ok("run", "-d", "--name", "a1", "--network", "ova", "--", "sleep", "600")
    h1.ok("run", "-d", "--name", "b1", "--network", "ovb", "--", "sleep", "600")
    h1.ok("run", "-d", "--name", "i1", "--network", "ovi", "--", "sleep", "600")
    h2.ok("run", "-d", "--name", "a2", "--network", "ova", "--", "sleep", "600")
    h2.ok("run", "-d", "--name", "i2", "--network", "ovi", "--", "sleep", "600")
    a1, b1, i1 = address(h1, "a1"), address(h1, "b1"), address(h1, "i1")
    wait_for(
        "a2 never reached a1",
        lambda: h2.cli("exec", "a2", "--", "ping", "-c1", "-W1", a1).returncode == 0,
    )
    # Another network's container, on the same host as a1: not reachable.
    assert h2.cli("exec", "a2", "--", "ping", "-c2", "-W1", b1).returncode != 0
    # Its name does not resolve from a network it is not on.
    assert h2.cli("exec", "a2", "--", "getent", "hosts", "b1").stdout == ""
    # An internal network spans hosts but has no way out, and reaches no
    # other network.
    wait_for(
        "i2 never reached i1",
        lambda: h2.cli("exec", "i2", "--", "ping", "-c1", "-W1", i1).returncode == 0,
    )
    assert h2.cli("exec", "i2", "--", "ping", "-c2", "-W1", a1).returncode != 0
    assert h2.cli("exec", "i2", "--", "ping", "-c2", "-W1", "192.0.2.1").returncode != 0
    # A non-internal overlay network leaves through its own host, masqueraded
    # there (the fabric's address, outside every cove network).
    assert h2.cli("exec", "a2", "--", "ping", "-c1", "-W2", "192.0.2.1").returncode == 0


def test_a_bridge_network_stays_host_local_in_a_cluster(cluster3: Cluster) -> None:
    # The default driver: a network of the same name on every host, each
    # host's its own. Another host's container on it is out of reach, and
    # its name does not resolve here (it used to, to an unreachable address).
    h1, h2, _h3 = cluster3.hosts
    h1.ok("network", "create", "brl", "--subnet", "10.207.0.0/24")
    h1.ok("run", "-d", "--name", "l1", "--network", "brl", "--", "sleep", "600")
    h1.ok("run", "-d", "--name", "l1b", "--network", "brl", "--", "sleep", "600")
    h2.ok("run", "-d", "--name", "l2", "--network", "brl", "--", "sleep", "600")
    wait_for(
        "l1 never resolved l1b on its own host",
        lambda: h1.cli("exec", "l1", "--", "getent", "hosts", "l1b").stdout.strip() != "",
    )
    assert h1.cli("exec", "l1", "--", "getent", "hosts", "l2").stdout == ""
    assert h2.cli("exec", "l2", "--", "getent", "hosts", "l1").stdout == ""
    assert h2.cli("exec", "l2", "--", "ping", "-c1", "-W1", address(h1, "l1")).returncode != 0


_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 8080), timeout=2).close(); print("open")
except OSError as e:
    print("closed", type(e).__name__)
"""


def test_policy_applies_to_traffic_between_hosts(cluster3: Cluster) -> None:
    h1, h2, h3 = cluster3.hosts
    h1.ok("network", "create", "ovp", "--driver", "overlay", "--default-deny",
          "--subnet", "10.207.0.0/24")  # fmt: skip
    h1.ok("run", "-d", "--name", "api", "--network", "ovp", "--", sys.executable, "-c", _SERVER)
    h2.ok("run", "-d", "--name", "web", "--network", "ovp", "--label", "role=front",
          "--", "sleep", "600")  # fmt: skip
    h3.ok("run", "-d", "--name", "other", "--network", "ovp", "--", "sleep", "600")
    api = address(h1, "api")

    def reaches(host: Host, name: str) -> str:
        out = host.ok("exec", name, "--", sys.executable, "-c", _CONNECT, api)
        return out.split()[0]

    # Default deny: nobody reaches api, from any host.
    wait_for("web got the name", lambda: h2.cli("exec", "web", "--", "getent", "hosts", "api")
             .stdout.split()[:1] == [api])  # fmt: skip
    assert reaches(h2, "web") == "closed"
    assert reaches(h3, "other") == "closed"
    # By web's label: h1, where api runs, reads no container record of h2's
    # (the label comes with web's endpoint).
    h2.ok("policy", "allow", "--network", "ovp", "--from", "role=front", "--to", "api",
          "--port", "8080/tcp")  # fmt: skip
    wait_for("the rule never let web in", lambda: reaches(h2, "web") == "open")
    assert reaches(h3, "other") == "closed"


_NAMED = """
import socket, sys
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 7070)); t.listen(16)
while True:
    c, _ = t.accept(); c.sendall(sys.argv[1].encode()); c.close()
"""

_ASK = """
import socket, sys
seen = []
for _ in range(int(sys.argv[2])):
    try:
        c = socket.create_connection((sys.argv[1], 7070), timeout=2)
        seen.append(c.recv(100).decode()); c.close()
    except OSError:
        seen.append("fail")
print(" ".join(seen))
"""


def test_a_vip_spreads_over_instances_on_other_hosts(cluster3: Cluster) -> None:
    h1, h2, h3 = cluster3.hosts
    h1.ok("network", "create", "ovs", "--driver", "overlay", "--subnet", "10.209.0.0/24")
    for host, name in ((h1, "s1"), (h2, "s2")):
        host.ok("run", "-d", "--name", name, "--network", "ovs", "--service", "echo:7070",
                "--", sys.executable, "-c", _NAMED, name)  # fmt: skip
    h3.ok("run", "-d", "--name", "client", "--network", "ovs", "--", "sleep", "600")
    vip = h1.ok("service", "vip", "echo").strip()

    def answers() -> set[str]:
        out = h3.ok("exec", "client", "--", sys.executable, "-c", _ASK, vip, "20")
        return set(out.split())

    # From h3, which runs neither instance: both answer through the VIP.
    wait_for("the VIP never reached both hosts' instances", lambda: answers() == {"s1", "s2"},
             timeout=30)  # fmt: skip
