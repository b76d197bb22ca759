"""Scale by design: a container start on one host costs the other agents
what changed, not a re-read of every container in the cluster.

Before, each agent's policy compile, registrar and container reconciler
re-read every container and endpoint record from etcd when any host
started a container: with 300 containers in the network, the idle host h1
received about 1.8 MB from etcd per start on h2 (3 MB with 500). They now
read the hub's cache, kept current by the watch, and h1 receives the new
records once each.

The starting host h2 used to read every address of the network from etcd
to pick a free one (about 85 kB per start with 300 containers, 129 kB
with 500); its IPAM now picks from the same cache, the store's
compare-and-swap create still guarding uniqueness.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cluster import Host, make_cluster
from fanout import FabricMember, clones, remove, rx_bytes, settle

pytestmark = pytest.mark.root

EXISTING = 300
STARTS = 3
SUBNET = "10.90.0.0/16"
# Bytes h1 may receive per start on h2: about 1,800 kB while every pass
# re-read the cluster, about 20 kB with the watch's events once each (with
# 300 containers in the network), and about 3 kB (bench/cluster/etcd_load.py)
# now that h1, which has no container on the network, follows none of its
# endpoints and addresses.
BOUND = 12 * 1024
# Bytes the starting host h2 may receive per start: measured about 21 kB
# after, about 85 kB before (IPAM's read of the whole network).
BOUND_STARTING = 50 * 1024


def test_a_start_on_one_host_costs_the_others_only_what_changed(tmp_path: Path) -> None:
    with make_cluster(tmp_path, 2, "--reconcile-interval", "15") as cluster:
        h1, h2 = cluster.hosts
        member = FabricMember(cluster.fabric)
        h2.ok("network", "create", "fan", "--subnet", SUBNET)
        h2.ok("run", "-d", "--name", "seed", "--network", "fan", "--", "sleep", "600")
        settle(member)
        keys = clones(member, "seed", "fan", SUBNET, EXISTING)
        try:
            settle(member, quiet=3.0)
            time.sleep(2)
            before, before2 = rx_bytes(h1.netns), rx_bytes(h2.netns)
            for i in range(STARTS):
                h2.ok("run", "-d", "--name", f"new{i}", "--network", "fan",
                      "--service", f"new{i}:80", "--", "sleep", "600")  # fmt: skip
                settle(member)
            per_start = (rx_bytes(h1.netns) - before) / STARTS
            starting = (rx_bytes(h2.netns) - before2) / STARTS
            assert per_start < BOUND, f"h1 received {per_start / 1024:.0f} kB per start on h2"
            assert starting < BOUND_STARTING, f"h2 received {starting / 1024:.0f} kB per start"
            # What h1 learnt from its cache is right: the containers, their
            # node and the services h2 registered for them.
            listed = {c["name"]: c for c in json.loads(h1.ok("ps", "-a", "--format", "json"))}
            assert {f"new{i}" for i in range(STARTS)} <= set(listed)
            assert all(listed[f"new{i}"].get("node") == "h2" for i in range(STARTS)), listed
            status, services = h1.api("GET", "/v1/catalog/services")
            assert status == 200 and {f"new{i}" for i in range(STARTS)} <= set(services)
            # What h1 does not follow, it still answers from etcd.
            (inspected,) = json.loads(h1.ok("network", "inspect", "fan"))
            members = json.dumps(inspected)
            assert all(f"new{i}" in members for i in range(STARTS)), inspected

            # h1 watches only its own node's containers: h2's never reach
            # it (its events show h2's endpoints and services, not h2's
            # containers), while h2 hears of its own.
            def container_events(host: Host) -> set[str]:
                out = host.ok("events", "--since", "0", "--no-stream", "--format", "json",
                              "--filter", "type=container")  # fmt: skip
                return {json.loads(line)["name"] for line in out.splitlines() if line.strip()}

            assert not {f"new{i}" for i in range(STARTS)} & container_events(h1)
            assert {f"new{i}" for i in range(STARTS)} <= container_events(h2)
        finally:
            remove(member, keys)
        for i in range(STARTS):
            h2.ok("rm", "-f", f"new{i}")
        h2.ok("rm", "-f", "seed")
