"""Nodes are first-class: three hosts (network namespaces) on one etcd, each
with its own agent (see tests/cluster.py). A container lives on the host
whose agent received ``cove run``; only that host builds its namespace and
veth, runs it and registers its services; any host can stop, start or
remove it through the store."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agentproc import COVE, AgentProc, pid_alive
from cluster import Cluster, Host, make_cluster, members, wait_for
from cove.agent.teardown import teardown

pytestmark = [pytest.mark.root, pytest.mark.etcd]

SUBNET = "10.89.70.0/24"


def inspect(host: Host, name: str) -> dict[str, Any]:
    data = json.loads(host.ok("inspect", name))
    assert isinstance(data, list) and len(data) == 1  # always a list, as Docker's
    item = data[0]
    assert isinstance(item, dict)
    return item


def ps(host: Host, *args: str) -> dict[str, dict[str, Any]]:
    items = json.loads(host.ok("ps", "--format", "json", *args))
    return {c["name"]: c for c in items}


def test_each_node_is_recorded_with_its_advertise_address(cluster3: Cluster) -> None:
    for host in cluster3.hosts:
        raw = cluster3.etcd_get(f"cluster/nodes/{host.name}")
        assert raw is not None, host.name
        record = json.loads(raw)
        assert record["name"] == host.name
        assert record["advertise"] == host.address
    # Every host's view: three live members at their fabric addresses.
    for host in cluster3.hosts:
        found = members(host)
        assert {n: (m["advertise"], m["status"]) for n, m in found.items()} == {
            h.name: (h.address, "alive") for h in cluster3.hosts
        }
    table = cluster3.host(2).ok("members")
    assert "192.0.2.13" in table and "alive" in table
    # The Consul catalog shows each node at its advertise address too.
    status, nodes = cluster3.host(1).api("GET", "/v1/catalog/nodes")
    assert status == 200
    assert {n["Node"]: n["Address"] for n in nodes} == {h.name: h.address for h in cluster3.hosts}
    status, found_members = cluster3.host(3).api("GET", "/v1/agent/members")
    assert {m["Name"]: m["Addr"] for m in found_members} == {
        h.name: h.address for h in cluster3.hosts
    }
    # A clean stop is "left" (a lease that runs out is "failed", below).
    cluster3.host(3).stop()
    assert members(cluster3.host(1))["h3"]["status"] == "left"
    cluster3.host(3).start()
    assert members(cluster3.host(1))["h3"]["status"] == "alive"


def test_containers_are_built_run_and_removed_only_on_their_node(cluster3: Cluster) -> None:
    h1, h2, h3 = cluster3.hosts
    h1.ok("network", "create", "vnet", "--subnet", SUBNET)
    for host in cluster3.hosts:
        host.ok("run", "-d", "--name", f"c{host.number}", "--network", "vnet", "--", "sleep", "600")
    ids = {h.name: inspect(h1, f"c{h.number}")["id"] for h in cluster3.hosts}
    # Give every agent time for a full reconcile pass (interval 2 s): none
    # may build a copy of another host's container.
    time.sleep(4)
    for host in cluster3.hosts:
        assert host.container_netns() == [ids[host.name]], host.name
        assert len(host.veths()) == 1, (host.name, host.veths())
    listed = ps(h1)
    assert {n: c["node"] for n, c in listed.items()} == {"c1": "h1", "c2": "h2", "c3": "h3"}
    assert {c["state"]["status"] for c in listed.values()} == {"running"}
    assert "NODE" in h1.ok("ps").splitlines()[0]
    assert {n: m["containers"] for n, m in members(h3).items()} == {"h1": 1, "h2": 1, "h3": 1}

    # A restarted agent adopts its own container and starts no copies.
    pid2 = inspect(h2, "c2")["state"]["pid"]
    h2.stop()
    h2.start()
    time.sleep(4)
    assert h2.container_netns() == [ids["h2"]]
    assert len(h2.veths()) == 1
    assert inspect(h2, "c2")["state"]["pid"] == pid2
    assert pid_alive(pid2)

    # exec and logs work where the container runs; elsewhere the error
    # names the node to use.
    res = h1.cli("exec", "c2", "--", "true")
    assert res.returncode != 0 and "node h2" in res.stderr, res.stderr
    res = h1.cli("logs", "c2")
    assert res.returncode != 0 and "node h2" in res.stderr, res.stderr
    assert h2.cli("exec", "c2", "--", "true").returncode == 0

    # stop and start from another host: the owner carries them out.
    h1.ok("stop", "-t", "1", "c3")
    assert not pid_alive(inspect(h3, "c3")["state"]["pid"] or 1 << 22)
    assert ps(h1, "-a")["c3"]["state"]["status"] == "exited"
    assert "c3" not in ps(h2)
    h2.ok("start", "c3")
    assert ps(h1)["c3"]["state"]["status"] == "running"
    assert inspect(h3, "c3")["state"]["status"] == "running"

    # rm without -f of a running container elsewhere: refused by its node.
    res = h1.cli("rm", "c2")
    assert res.returncode != 0 and "is running" in res.stderr, res.stderr
    # rm -f from h1 removes it on h2: process, namespace, veth, records.
    h1.ok("rm", "-f", "c2")
    assert not pid_alive(pid2)
    assert h2.container_netns() == []
    assert h2.veths() == []
    assert "c2" not in ps(h3, "-a")
    assert cluster3.etcd_get("containers/h2/c2") is None
    assert cluster3.etcd_get("cluster/names/c2") is None
    # The others are untouched.
    assert h1.container_netns() == [ids["h1"]]
    assert h3.container_netns() == [ids["h3"]]

    # connect and disconnect from another host: the owner builds the link.
    h1.ok("network", "create", "back", "--subnet", "10.89.71.0/24")
    h1.ok("network", "connect", "back", "c3")
    wait_for(lambda: len(h3.veths()) == 2, 15, "the new link on h3")
    assert len(h1.veths()) == 1
    assert h3.cli("exec", "c3", "--", "ip", "-4", "addr", "show", "eth1").returncode == 0
    h1.ok("network", "disconnect", "back", "c3")
    wait_for(lambda: len(h3.veths()) == 1, 15, "the link gone from h3")


def _health(host: Host, service: str) -> list[dict[str, Any]]:
    status, body = host.api("GET", f"/v1/health/service/{service}")
    assert status == 200, body
    assert isinstance(body, list)
    return body


def _statuses(entries: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(node, node address, aggregated status) per instance."""
    out = []
    for e in entries:
        checks = {c["Status"] for c in e["Checks"]}
        worst = next(s for s in ("critical", "warning", "passing") if s in checks | {"passing"})
        out.append((e["Node"]["Node"], e["Node"]["Address"], worst))
    return sorted(out)


def test_services_register_once_and_a_dead_node_goes_critical_then_adopts(
    tmp_path: Path,
) -> None:
    with make_cluster(tmp_path, 3, "--node-ttl", "4") as cluster:
        h1, h2, h3 = cluster.hosts
        h1.ok("network", "create", "vnet", "--subnet", SUBNET)
        h2.ok(
            "run", "-d", "--name", "web", "--network", "vnet", "--service", "web:8080",
            "--", sys.executable, "-m", "http.server", "8080",
        )  # fmt: skip
        h2.ok("run", "-d", "--name", "other", "--network", "vnet", "--", "sleep", "600")
        web = inspect(h2, "web")
        other = inspect(h2, "other")
        # One instance, under h2 (at its advertise address), its check
        # run by h2 (the only host that reaches the container): passing.
        want = [("h2", "192.0.2.12", "passing")]
        for host in (h1, h3):
            wait_for(lambda host=host: _statuses(_health(host, "web")) == want, 30, "passing")
        time.sleep(3)  # every registrar has had a pass by now
        assert _statuses(_health(h3, "web")) == want

        # h2's agent dies: its node and instances are critical everywhere
        # within the node TTL (4 s, plus a renewal period and a poll).
        h2.kill9()
        died = time.monotonic()
        wait_for(
            lambda: [s for *_, s in _statuses(_health(h1, "web"))] == ["critical"], 15, "critical"
        )
        assert time.monotonic() - died <= 4 + 4 / 3 + 2
        # The node record's own lease runs out within the TTL too.
        wait_for(lambda: members(h3)["h2"]["status"] == "failed", 8, "h2 failed")
        assert time.monotonic() - died <= 4 + 4 / 3 + 2
        # Its container keeps running.
        pid = web["state"]["pid"]
        assert pid_alive(pid)
        # rm from another host while h2 is down: a clear error naming h2.
        res = h1.cli("stop", "web")
        assert res.returncode != 0 and "h2" in res.stderr and "down" in res.stderr, res.stderr
        # A removal is kept as a mark, carried out when h2 is back.
        res = h1.cli("rm", "-f", "other")
        assert res.returncode != 0 and "marked for removal" in res.stderr, res.stderr
        assert pid_alive(other["state"]["pid"])

        # Back: h2 adopts its container (same process, same namespace) and
        # its instance passes again.
        h2.start()
        assert inspect(h2, "web")["state"]["pid"] == pid
        assert h2.container_netns() == [web["id"]]
        wait_for(lambda: _statuses(_health(h1, "web")) == want, 30, "passing again")
        assert members(h1)["h2"]["status"] == "alive"
        wait_for(lambda: "other" not in ps(h3, "-a"), 15, "the marked container removed")
        assert not pid_alive(other["state"]["pid"])
        assert h2.container_netns() == [web["id"]]
        assert cluster.etcd_get("containers/h2/other") is None


def _agent_cmd(host: Host, workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """A second agent in ``host``'s namespace (own state, socket, ports)."""
    args = [
        "nsenter", f"--net=/run/netns/{host.netns}",
        *COVE, "agent",
        "--state-dir", str(workdir / "state"),
        "--socket", str(workdir / "agent.sock"),
        "--http", "127.0.0.1:8510", "--dns", "127.0.0.1:8610",
        "--upstream", "127.0.0.1:5399",
        *extra,
    ]  # fmt: skip
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_a_taken_node_name_or_a_foreign_address_is_refused(
    cluster3: Cluster, tmp_path: Path
) -> None:
    h1, h2, _ = cluster3.hosts
    before = cluster3.etcd_get("cluster/nodes/h1")
    res = _agent_cmd(
        h2, tmp_path / "x", "--store", cluster3.store_url, "--node-name", "h1",
        "--advertise", h2.address,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "node name 'h1' is taken by a live agent" in res.stderr
    assert "--node-name" in res.stderr
    assert cluster3.etcd_get("cluster/nodes/h1") == before
    assert set(members(h1)) == {"h1", "h2", "h3"}

    res = _agent_cmd(
        h2, tmp_path / "y", "--store", cluster3.store_url, "--node-name", "h9",
        "--advertise", h1.address,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "--advertise 192.0.2.11 is not an address of this host" in res.stderr
    assert cluster3.etcd_get("cluster/nodes/h9") is None
    assert cluster3.etcd_get("cluster/known/h9") is None

    # Without --advertise: the source address of the host's default route.
    (tmp_path / "z").mkdir()
    extra = AgentProc(h2.netns, tmp_path / "z", "--store", cluster3.store_url,
                      "--node-name", "h9")  # fmt: skip
    extra.http_port, extra.dns_port = 8510, 8610
    try:
        extra.start(prefix=("nsenter", f"--net=/run/netns/{h2.netns}"))
        assert members(h1)["h9"]["advertise"] == h2.address
    finally:
        extra.stop()
        teardown(extra.state_dir / "run")
    assert members(h1)["h9"]["status"] == "left"


def test_concurrent_runs_on_three_hosts_get_distinct_addresses(cluster3: Cluster) -> None:
    h1 = cluster3.host(1)
    h1.ok("network", "create", "vnet", "--subnet", SUBNET)
    errors: list[str] = []

    def run(host: Host, i: int) -> None:
        res = host.cli("run", "-d", "--name", f"r{host.number}x{i}", "--network", "vnet",
                       "--", "sleep", "600")  # fmt: skip
        if res.returncode != 0:
            errors.append(res.stderr)

    threads = [
        threading.Thread(target=run, args=(host, i)) for host in cluster3.hosts for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    listed = ps(h1)
    assert len(listed) == 12
    addrs = [c["endpoints"]["vnet"]["ipv4"] for c in listed.values()]
    assert len(set(addrs)) == 12, addrs
    for host in cluster3.hosts:
        assert len(host.container_netns()) == 4
    # Each host allocated in an address block of its own (/26), as
    # `network inspect` shows them.
    [network] = json.loads(h1.ok("network", "inspect", "vnet"))
    owner = {ipaddress.ip_network(b["cidr"]): b["node"] for b in network["blocks"]}
    assert sorted(owner.values()) == sorted(h.name for h in cluster3.hosts), owner
    for name, c in listed.items():
        addr = ipaddress.ip_address(c["endpoints"]["vnet"]["ipv4"].split("/")[0])
        [block] = [b for b in owner if addr in b]
        assert block.prefixlen == 26
        assert owner[block] == cluster3.host(int(name[1])).name, (name, addr, owner)


def test_each_host_has_its_own_host_ports(cluster3: Cluster) -> None:
    h1, h2, _ = cluster3.hosts
    h1.ok("network", "create", "vnet", "--subnet", SUBNET)
    for host in (h1, h2):
        host.ok("run", "-d", "--name", f"p{host.number}", "--network", "vnet",
                "-p", "18080:80", "--", "sleep", "600")  # fmt: skip
    res = h1.cli("run", "-d", "--name", "p3", "--network", "vnet", "-p", "18080:80",
                 "--", "sleep", "600")  # fmt: skip
    assert res.returncode != 0 and "already published by p1" in res.stderr, res.stderr
    # Removed from another host, p1 frees h1's port (and only that one).
    h2.ok("rm", "-f", "p1")
    h1.ok("run", "-d", "--name", "p3", "--network", "vnet", "-p", "18080:80",
          "--", "sleep", "600")  # fmt: skip
    res = h2.cli("run", "-d", "--name", "p4", "--network", "vnet", "-p", "18080:80",
                 "--", "sleep", "600")  # fmt: skip
    assert res.returncode != 0 and "already published by p2" in res.stderr, res.stderr
