"""Overlay networks when an agent dies: kill -9 of h2's agent keeps the
traffic of its containers flowing (the other hosts keep their entries while
its endpoints are in the store), and its restart converges every host's
kernel on the store with nothing left over."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import Cluster, Host, make_cluster

pytestmark = [pytest.mark.root, pytest.mark.etcd]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with make_cluster(tmp_path, 3, "--node-ttl", "3") as c:
        yield c


def wait_for(what: str, check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def address(host: Host, container: str) -> str:
    data = json.loads(host.ok("inspect", container))
    item = data[0] if isinstance(data, list) else data
    return str(next(iter(item["endpoints"].values()))["ipv4"])


def mac(host: Host, container: str) -> str:
    data = json.loads(host.ok("inspect", container))
    item = data[0] if isinstance(data, list) else data
    return str(next(iter(item["endpoints"].values()))["mac"])


State = tuple[list[str], list[tuple[str, str]], list[tuple[str, str]]]


def overlay_state(host: Host) -> State:
    """(VXLAN devices, their FDB entries (MAC, destination), their permanent
    neighbours (address, MAC)) of a host, sorted. A device the agent removes
    between the listing and the reading of its entries makes the reading
    fail: the state is then read again, whole."""
    for _ in range(5):
        try:
            return _overlay_state(host)
        except subprocess.CalledProcessError:
            time.sleep(0.1)
    return _overlay_state(host)


def _overlay_state(host: Host) -> State:
    devices = [
        link["ifname"] for link in json.loads(host.ip("-j", "link", "show", "type", "vxlan"))
    ]
    fdb: list[tuple[str, str]] = []
    neigh: list[tuple[str, str]] = []
    for dev in devices:
        rows = json.loads(
            nsutil_run("ip", "netns", "exec", host.netns, "bridge", "-j", "fdb", "show", "dev", dev)
        )
        fdb += [(r["mac"], r["dst"]) for r in rows if r.get("dst")]
        rows = json.loads(host.ip("-j", "neigh", "show", "dev", dev))
        neigh += [(r["dst"], r["lladdr"]) for r in rows if "PERMANENT" in r.get("state", [])]
    return sorted(devices), sorted(fdb), sorted(neigh)


def nsutil_run(*argv: str) -> str:
    import nsutil

    return nsutil.run(*argv).stdout


def pings(host: Host, container: str, dst: str) -> bool:
    return host.cli("exec", container, "--", "ping", "-c1", "-W1", dst).returncode == 0


def test_kill9_keeps_traffic_and_restart_converges(cluster: Cluster) -> None:
    h1, h2, h3 = cluster.hosts
    h1.ok("network", "create", "ov", "--driver", "overlay", "--subnet", "10.203.0.0/24")
    h1.ok("run", "-d", "--name", "api", "--network", "ov", "--", "sleep", "600")
    h2.ok("run", "-d", "--name", "web", "--network", "ov", "--", "sleep", "600")
    api, web = address(h1, "api"), address(h2, "web")
    wait_for("no traffic across", lambda: pings(h1, "api", web))
    before1, before2 = overlay_state(h1), overlay_state(h2)
    assert before1[1] == [(mac(h2, "web"), h2.address)]
    assert before2[1] == [(mac(h1, "api"), h1.address)]

    h2.kill9()
    wait_for(
        "h2's node record outlived its lease", lambda: cluster.etcd_get("cluster/nodes/h2") is None
    )
    time.sleep(1.0)  # h1's pass on the node's removal
    # h1 keeps its entries for h2's container, and traffic both ways flows.
    assert overlay_state(h1) == before1
    assert pings(h1, "api", web)
    # A container started on h1 meanwhile: h2 learns of it when its agent
    # is back (until then nothing on h2 can program its entries).
    h1.ok("run", "-d", "--name", "late", "--network", "ov", "--", "sleep", "600")
    late_mac = mac(h1, "late")

    h2.start()
    wait_for("h2 never learned late", lambda: (late_mac, h1.address) in overlay_state(h2)[1])
    after1, after2 = overlay_state(h1), overlay_state(h2)
    assert after1 == before1
    assert after2[0] == before2[0]  # the same single device, not a second one
    assert after2[1] == sorted([(mac(h1, "api"), h1.address), (late_mac, h1.address)])
    assert sorted(a for a, _ in after2[2]) == sorted([api, address(h1, "late")])
    assert pings(h2, "web", api) and pings(h2, "web", address(h1, "late"))
    assert overlay_state(h3) == ([], [], [])
    # web's removal takes its entries from h1.
    h2.ok("rm", "-f", "web")
    wait_for("h1 kept web's entries", lambda: overlay_state(h1)[1] == [])
    wait_for("h2 kept its device", lambda: overlay_state(h2)[0] == [])
