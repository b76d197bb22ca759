"""A node that never comes back: `cove members rm NODE` on another host
removes everything it owned (Consul's force-leave -prune, Swarm's `docker
node rm`), a live node is refused, a removed node's agent that returns
starts fresh and stops its orphaned containers, and `--reap-after` does the
same on its own. Three hosts on one etcd, agents in namespaces
(tests/cluster.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import nsutil
from agentproc import pid_alive
from cluster import Cluster, Host, make_cluster, members, wait_for

pytestmark = [pytest.mark.root, pytest.mark.etcd]

OVERLAY = "10.203.70.0/24"


def inspect(host: Host, name: str) -> dict[str, Any]:
    item = json.loads(host.ok("inspect", name))[0]
    assert isinstance(item, dict)
    return item


def vxlan(host: Host) -> str:
    links = json.loads(host.ip("-j", "link", "show", "type", "vxlan"))
    assert len(links) == 1, links
    return str(links[0]["ifname"])


def fdb(host: Host) -> str:
    """The forwarding entries of ``host``'s VXLAN device."""
    return nsutil.run("bridge", "-n", host.netns, "fdb", "show", "dev", vxlan(host)).stdout


def neigh(host: Host) -> str:
    return host.ip("neigh", "show", "dev", vxlan(host))


def resolves(host: Host, container: str, name: str) -> str:
    res = host.cli("exec", container, "--", "getent", "hosts", name)
    return res.stdout.split()[0] if res.returncode == 0 and res.stdout else ""


def host_dns(host: Host, name: str) -> str:
    """``dig +short`` at ``host``'s agent (Consul's DNS interface)."""
    res = subprocess.run(
        ["nsenter", f"--net=/run/netns/{host.netns}", "dig", "+short", "+time=2", "+tries=1",
         "-p", str(host.agent.dns_port), "@127.0.0.1", name],
        capture_output=True, text=True, timeout=15,
    )  # fmt: skip
    return res.stdout.strip()


def health(host: Host, service: str) -> list[dict[str, Any]]:
    status, body = host.api("GET", f"/v1/health/service/{service}")
    assert status == 200, body
    assert isinstance(body, list)
    return body


def blocks(host: Host, network: str) -> dict[str, str]:
    """The network's address blocks and their nodes, as `network inspect` shows them."""
    [data] = json.loads(host.ok("network", "inspect", network))
    return {b["cidr"]: b["node"] for b in data["blocks"]}


def test_a_dead_node_is_removed_everywhere_and_its_agent_comes_back_fresh(
    tmp_path: Path,
) -> None:
    with make_cluster(tmp_path, 3, "--node-ttl", "4") as cluster:
        _removed_everywhere(cluster)


def _removed_everywhere(cluster: Cluster) -> None:
    h1, h2, h3 = cluster.hosts
    h1.ok("network", "create", "ov", "--driver", "overlay", "--subnet", OVERLAY)
    h2.ok(
        "run", "-d", "--name", "web", "--network", "ov", "--service", "web:8080",
        "-p", "18080:8080", "--", sys.executable, "-m", "http.server", "8080",
    )  # fmt: skip
    h2.ok("run", "-d", "--name", "other", "--network", "ov", "--", "sleep", "600")
    h1.ok("run", "-d", "--name", "probe", "--network", "ov", "--", "sleep", "600")
    web, other = inspect(h2, "web"), inspect(h2, "other")
    web_ip = web["endpoints"]["ov"]["ipv4"]
    web_mac = web["endpoints"]["ov"]["mac"]
    wait_for(lambda: resolves(h1, "probe", "web") == web_ip, 30, "web resolving on h1")
    wait_for(lambda: web_mac in fdb(h1) and web_ip in neigh(h1), 15, "h1's entries for web")
    assert "192.0.2.12" in fdb(h1)
    wait_for(
        lambda: (
            [c["Status"] for e in health(h3, "web") for c in e["Checks"]] == ["passing", "passing"]
        ),
        30,
        "web passing",
    )
    assert host_dns(h3, "web.service.cove") == web_ip

    # A live node is refused: a clear error, nothing removed.
    res = h1.cli("members", "rm", "h2")
    assert res.returncode == 5, res.stderr
    assert "node h2 is alive" in res.stderr and "--force" in res.stderr, res.stderr
    assert members(h3)["h2"]["status"] == "alive"
    assert cluster.etcd_get("containers/h2/web") is not None
    # Nor can a host remove itself.
    res = h1.cli("node", "rm", "h1")
    assert res.returncode == 5 and "own node" in res.stderr, res.stderr

    # h2's agent dies for good (as far as anyone knows); its containers run on.
    h2.kill9()
    wait_for(lambda: members(h1)["h2"]["status"] == "failed", 15, "h2 failed")
    table = h3.ok("members")
    assert any(line.split()[:1] == ["h2"] and "failed" in line for line in table.splitlines())
    assert members(h1)["h2"]["containers"] == 2
    assert pid_alive(web["state"]["pid"])

    assert sorted(blocks(h1, "ov").values()) == ["h1", "h2"]  # an address block each

    out = h1.ok("members", "rm", "h2")
    assert "removed node h2: 2 containers (other, web)" in out, out
    assert list(blocks(h3, "ov").values()) == ["h1"]  # h2's block is free to claim

    # On every other host: the node, its containers, names, entries and
    # catalog entries are gone.
    for host in (h1, h3):
        assert "h2" not in members(host)
        assert "h2" not in host.ok("members")
        listed = {c["name"] for c in json.loads(host.ok("ps", "-a", "--format", "json"))}
        assert listed.isdisjoint({"web", "other"}), listed
        assert health(host, "web") == []
        status, node = host.api("GET", "/v1/catalog/node/h2")
        assert node is None or status == 404, (status, node)
    wait_for(lambda: resolves(h1, "probe", "web") == "", 15, "web gone from h1's DNS")
    wait_for(lambda: host_dns(h3, "web.service.cove") == "", 15, "web gone from h3's DNS")
    wait_for(lambda: web_mac not in fdb(h1), 15, "h1's FDB entry for web gone")
    wait_for(lambda: web_ip not in neigh(h1), 15, "h1's neighbour entry for web gone")
    assert "192.0.2.12" not in fdb(h1)
    for key in ("containers/h2/web", "containers/h2/other", "cluster/names/web",
                "cluster/names/other", "ports/tcp/18080@h2",
                f"ipam/ov/{web_ip}", "cluster/nodes/h2", "cluster/known/h2",
                "registry/nodes/h2", f"cluster/status/h2/{web['id']}"):  # fmt: skip
        assert cluster.etcd_get(key) is None, key
    # Its address is free for a container on another host.
    h3.ok("run", "-d", "--name", "reuse", "--network", "ov", "--ip", web_ip, "--", "sleep", "600")
    assert inspect(h1, "reuse")["endpoints"]["ov"]["ipv4"] == web_ip
    wait_for(lambda: resolves(h1, "probe", "reuse") == web_ip, 15, "reuse resolving on h1")
    # The removed containers still run on h2, which nobody can reach.
    assert pid_alive(web["state"]["pid"]) and pid_alive(other["state"]["pid"])

    # h2's agent returns: it joins afresh, stops and removes its orphaned
    # containers (their namespaces and veths too) and resurrects nothing.
    h2.start()
    wait_for(lambda: not pid_alive(web["state"]["pid"]), 15, "web's process stopped")
    wait_for(lambda: not pid_alive(other["state"]["pid"]), 15, "other's process stopped")
    wait_for(lambda: h2.container_netns() == [] and h2.veths() == [], 20, "h2's leftovers gone")
    assert {n: (m["status"], m["containers"]) for n, m in members(h1).items()} == {
        "h1": ("alive", 1),
        "h2": ("alive", 0),
        "h3": ("alive", 1),
    }
    time.sleep(3)  # a registrar and reconcile pass on h2
    assert health(h1, "web") == []
    assert cluster.etcd_get("containers/h2/web") is None
    assert inspect(h3, "reuse")["endpoints"]["ov"]["ipv4"] == web_ip
    # Its names and host port are free again on h2.
    h2.ok("run", "-d", "--name", "web", "--network", "ov", "-p", "18080:8080",
          "--", "sleep", "600")  # fmt: skip
    assert inspect(h1, "web")["node"] == "h2"

    # Consul's way: `consul force-leave -prune h3` once h3 is dead.
    status, _ = h1.api("PUT", "/v1/agent/force-leave/h3?prune")
    assert status == 200
    assert members(h1)["h3"]["status"] == "alive"  # a live node stays, as in Consul
    h3.kill9()
    wait_for(lambda: members(h1)["h3"]["status"] == "failed", 15, "h3 failed")
    status, _ = h1.api("PUT", "/v1/agent/force-leave/h3?prune")
    assert status == 200
    assert "h3" not in members(h1)
    assert cluster.etcd_get("containers/h3/reuse") is None
    assert cluster.etcd_get("cluster/names/reuse") is None
    assert cluster.etcd_get(f"ipam/ov/{web_ip}") is None
    status, found = h1.api("GET", "/v1/agent/members")
    assert sorted(m["Name"] for m in found) == ["h1", "h2"]


def test_force_removes_a_live_node_which_rejoins_and_stops_its_orphans(
    cluster3: Cluster,
) -> None:
    h1, h2, _ = cluster3.hosts
    h1.ok("network", "create", "vnet", "--subnet", "10.89.72.0/24")
    h2.ok("run", "-d", "--name", "c2", "--network", "vnet", "--", "sleep", "600")
    c2 = inspect(h1, "c2")
    out = h1.ok("members", "rm", "--force", "h2")
    assert "removed node h2: 1 containers (c2)" in out, out
    # Its agent finds its lease gone on its next renewal (TTL 10 s, every
    # third of it), joins again and stops what the store no longer has.
    wait_for(lambda: not pid_alive(c2["state"]["pid"]), 20, "c2's process stopped")
    wait_for(lambda: members(h1).get("h2", {}).get("status") == "alive", 10, "h2 back")
    wait_for(lambda: h2.container_netns() == [] and h2.veths() == [], 20, "h2's leftovers gone")
    assert members(h1)["h2"]["containers"] == 0
    # Its node check rides on its new lease: passing again in the catalog.
    wait_for(
        lambda: any(
            c["CheckID"] == "serfHealth" and c["Status"] == "passing"
            for c in h1.api("GET", "/v1/health/node/h2")[1]
        ),
        10,
        "h2's serfHealth passing",
    )


def test_the_reaper_removes_a_node_dead_past_reap_after(tmp_path: Path) -> None:
    with make_cluster(tmp_path, 3, "--node-ttl", "3", "--reap-after", "10s") as cluster:
        h1, _, h3 = cluster.hosts
        h1.ok("network", "create", "vnet", "--subnet", "10.89.73.0/24")
        h3.ok("run", "-d", "--name", "c3", "--network", "vnet", "--service", "s3:80",
              "--", "sleep", "600")  # fmt: skip
        wait_for(lambda: health(h1, "s3"), 15, "s3 registered")
        h3.kill9()
        died = time.monotonic()
        wait_for(lambda: members(h1)["h3"]["status"] == "failed", 10, "h3 failed")
        # Not before its time...
        time.sleep(max(0.0, 8 - (time.monotonic() - died)))
        assert "h3" in members(h1)
        # ...and within a few passes after it: one agent reaps, everywhere.
        wait_for(lambda: "h3" not in members(h1), 25, "h3 reaped")
        assert cluster.etcd_get("containers/h3/c3") is None
        assert cluster.etcd_get("cluster/names/c3") is None
        assert health(cluster.host(2), "s3") == []
        holder = cluster.etcd_get("cluster/reaper")
        assert holder is not None and json.loads(holder)["node"] in ("h1", "h2")


def test_one_lease_per_node(hostns: str, tmp_path: Path) -> None:
    """The node record and the catalog's serfHealth share the node's lease:
    one keep-alive every third of the node TTL, not two."""
    from agentproc import AgentProc
    from conftest import cleanup_agent
    from etcd_fixture import etcd_process

    with etcd_process() as member:
        agent = AgentProc(hostns, tmp_path, "--store", f"etcd://{member.hostport}",
                          "--node-ttl", "3")  # fmt: skip
        try:
            agent.start()
            time.sleep(2)
            before = member.metrics()
            time.sleep(10)
            load = member.metrics() - before
            # One lease renewed every second: about 10; two leases made 20.
            assert 7 <= load.calls.get("LeaseKeepAlive", 0) <= 13, load.calls
            status, checks = agent.api("GET", "/v1/health/node/" + members_of(agent)[0])
            assert status == 200
            assert [c["Status"] for c in checks if c["CheckID"] == "serfHealth"] == ["passing"]
        finally:
            cleanup_agent(agent)


def members_of(agent: Any) -> list[str]:
    status, body = agent.api("GET", "/api/members")
    assert status == 200, body
    return [m["name"] for m in body]
