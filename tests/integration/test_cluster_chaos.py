"""Chaos on three hosts: a seeded random sequence of container and network
operations issued on random hosts (often for a container that lives on
another host), with kill -9 of a random agent at random points; then every
agent is killed and restarted, and each host's kernel must match the store:
every container of a node runs exactly once and only there, no veth,
namespace, bridge or VXLAN device without a record, IPAM holds exactly the
endpoints' addresses, no address twice, published ports exactly those of
the node's running containers. Then everything is removed and every host is
clean.

The seed is printed; rerun one with ``COVE_CHAOS_SEED=N`` (and the number of
operations with ``COVE_CHAOS_OPS=N``).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import nsutil
from cluster import ETCD_PORT, FABRIC_ADDRESS, Cluster, Host, make_cluster
from cove.cli.main import main as cli_main
from cove.runtime.spec import PortMapping

pytestmark = [pytest.mark.root, pytest.mark.etcd]

# 200 operations took 48-85 s, the whole test 80-170 s, on a loaded 2-core machine.
OPS = int(os.environ.get("COVE_CHAOS_OPS", "200"))
KILLS = (4, 6)  # kill -9 of a random agent, this many times (inclusive)
MAX_CONTAINERS = 12  # live at once: keeps a loaded 2-core machine responsive
NAMES = [f"x{i}" for i in range(24)]
NETWORKS = {
    "cb1": ("bridge", "10.89.90.0/24"),
    "cb2": ("bridge", "10.89.91.0/24"),
    "co1": ("overlay", "10.203.90.0/24"),
}
RUN_NETWORKS = ["cb1", "co1"]
CONVERGE = 60.0  # seconds for every host to match the store after the restart


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    # A short node TTL: a request for a killed agent's container fails at
    # once (instead of waiting out a long lease), as it would in a real
    # cluster whose lease expired.
    with make_cluster(tmp_path, 3, "--node-ttl", "3") as c:
        yield c


# -- what the store says --------------------------------------------------


def etcd_prefix(cluster: Cluster, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix`` read straight from etcd, values decoded."""
    start = prefix.encode()
    end = start[:-1] + bytes([start[-1] + 1])
    body = json.dumps(
        {"key": base64.b64encode(start).decode(), "range_end": base64.b64encode(end).decode()}
    )
    with nsutil.entered(cluster.fabric):
        conn = http.client.HTTPConnection(FABRIC_ADDRESS, ETCD_PORT, timeout=10)
        try:
            conn.request("POST", "/v3/kv/range", body=body)
            data = json.loads(conn.getresponse().read())
        finally:
            conn.close()
    out: dict[str, Any] = {}
    for kv in data.get("kvs") or []:
        raw = base64.b64decode(kv.get("value", ""))
        try:
            out[base64.b64decode(kv["key"]).decode()] = json.loads(raw)
        except ValueError:
            out[base64.b64decode(kv["key"]).decode()] = raw.decode(errors="replace")
    return out


@dataclass
class StoreView:
    networks: dict[str, dict[str, Any]]  # name -> record
    containers: dict[str, dict[str, Any]]  # name -> record
    endpoints: list[dict[str, Any]]
    ipam: dict[tuple[str, str], Any]  # (network, address) -> owner record
    ports: dict[str, Any]  # ports/<proto>/<port>@<node> -> claim

    @classmethod
    def read(cls, cluster: Cluster) -> StoreView:
        nets = {k.split("/", 1)[1]: v for k, v in etcd_prefix(cluster, "networks/").items()}
        # containers/<node>/<name>
        cons = {k.rsplit("/", 1)[1]: v for k, v in etcd_prefix(cluster, "containers/").items()}
        eps = list(etcd_prefix(cluster, "endpoints/").values())
        ipam = {
            tuple(k.split("/", 2)[1:]): v  # type: ignore[misc]
            for k, v in etcd_prefix(cluster, "ipam/").items()
        }
        return cls(nets, cons, eps, ipam, etcd_prefix(cluster, "ports/"))  # type: ignore[arg-type]


def container_node(record: dict[str, Any]) -> str:
    return str(record.get("node") or "")


# -- what a host's kernel says --------------------------------------------


def links(host: Host, kind: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(host.ip("-d", "-j", "link", "show", "type", kind))
    return found


def supervisor_children(host: Host) -> list[int]:
    pidfile = host.agent.state_dir / "run" / "supervisor.pid"
    if not pidfile.exists():
        pidfile = next(iter(host.agent.state_dir.rglob("supervisor.pid")), pidfile)
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return []
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(p) for p in f.read().split()]
    except OSError:
        return []
    return kids


def net_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def netns_inodes(host: Host) -> dict[str, int]:
    folder = host.agent.state_dir / "run" / "netns"
    out: dict[str, int] = {}
    for cid in host.container_netns():
        try:
            out[cid] = os.stat(folder / cid).st_ino
        except OSError:
            out[cid] = -1
    return out


def port_claims(host: Host) -> set[int]:
    """Host ports DNATed by cove's ``inet cove_ports`` table on a host."""
    res = nsutil.run("ip", "netns", "exec", host.netns, "nft", "-j", "list", "table", "inet",
                     "cove_ports", check=False)  # fmt: skip
    if res.returncode != 0:
        return set()
    ports: set[int] = set()
    for item in json.loads(res.stdout).get("nftables", []):
        rule = item.get("rule")
        if not rule or not any("dnat" in e for e in rule.get("expr", [])):
            continue
        for expr in rule["expr"]:
            match = expr.get("match")
            left = (match or {}).get("left", {})
            if isinstance(left, dict) and left.get("payload", {}).get("field") == "dport":
                right = match["right"]
                if isinstance(right, int):
                    ports.add(right)
    return ports


def problems(cluster: Cluster) -> list[str]:
    """Every way the hosts' kernels differ from the store (empty: converged)."""
    store = StoreView.read(cluster)
    out: list[str] = []
    by_id = {c["id"]: (name, c) for name, c in store.containers.items()}
    node_names = {h.name for h in cluster.hosts}
    # IPAM: exactly the endpoints' addresses, none twice.
    held: dict[tuple[str, str], str] = {}
    for ep in store.endpoints:
        if ep["container_id"] not in by_id:
            out.append(f"endpoint {ep['id'][:12]} of a container not in the store: {ep}")
        for fam in ("ipv4", "ipv6"):
            if ep.get(fam):
                key = (ep["network"], ep[fam])
                if key in held:
                    out.append(f"address {key} held by {held[key]} and {ep['container_name']}")
                held[key] = ep["container_name"]
    for key in sorted(set(store.ipam) - set(held)):
        out.append(f"IPAM allocation {key} without an endpoint: {store.ipam[key]}")
    for key in sorted(set(held) - set(store.ipam)):
        out.append(f"endpoint address {key} of {held[key]} not in IPAM")
    for name, c in store.containers.items():
        if container_node(c) not in node_names:
            out.append(f"container {name} on unknown node {container_node(c)!r}")
    bridges_of = {n["bridge"]: name for name, n in store.networks.items()}
    overlay_ids = {
        name: n["id"] for name, n in store.networks.items() if n.get("driver") == "overlay"
    }
    running_on: dict[str, int] = {}
    for host in cluster.hosts:
        mine = {
            c["id"]: name for name, c in store.containers.items() if container_node(c) == host.name
        }
        inodes = netns_inodes(host)
        for cid in sorted(set(inodes) - set(mine)):
            other = by_id.get(cid, ("?", {}))
            out.append(
                f"{host.name}: namespace of {other[0]} ({cid[:12]}), not a container of this node"
            )
        # Processes: every supervisor child sits in the namespace of one of
        # this node's containers; one per container.
        per_ns: dict[int, list[int]] = {}
        for pid in supervisor_children(host):
            ino = net_inode(pid)
            if ino is not None:
                per_ns.setdefault(ino, []).append(pid)
        ns_owner = {ino: cid for cid, ino in inodes.items()}
        for ino, pids in per_ns.items():
            if ino not in ns_owner:
                out.append(f"{host.name}: processes {pids} in no container's namespace")
            elif len(pids) != 1:
                out.append(f"{host.name}: {mine.get(ns_owner[ino])} runs {len(pids)} times: {pids}")
        # Every container of the node has its namespace (a stopped one
        # keeps it), and a process exactly when it is wanted running.
        wanted = {
            cid: store.containers[name].get("desired", "running") == "running"
            for cid, name in mine.items()
        }
        for cid, name in mine.items():
            if cid not in inodes:
                out.append(f"{host.name}: {name} has no namespace")
                continue
            runs = inodes[cid] in per_ns
            running_on[name] = running_on.get(name, 0) + runs
            if wanted[cid] and not runs:
                out.append(f"{host.name}: {name} is wanted running but has no process")
            elif runs and not wanted[cid]:
                out.append(f"{host.name}: {name} is stopped but runs")
        # Links: every host veth is an endpoint of this node's containers,
        # on its network's bridge, and every such endpoint has its veth.
        eps_here = {ep["host_veth"]: ep for ep in store.endpoints if ep["container_id"] in mine}
        veths = {
            link["ifname"]: link.get("master")
            for link in links(host, "veth")
            if re.fullmatch(r"cv[0-9a-f]{10}", link["ifname"])
        }
        for veth in sorted(set(veths) - set(eps_here)):
            out.append(f"{host.name}: veth {veth} without an endpoint here")
        for veth, ep in eps_here.items():
            if veth not in veths:
                out.append(f"{host.name}: {ep['container_name']} lacks its veth on {ep['network']}")
            elif bridges_of.get(veths[veth] or "") != ep["network"]:
                out.append(f"{host.name}: veth {veth} on {veths[veth]}, not on {ep['network']}")
        nets_here = {ep["network"] for ep in eps_here.values()}
        for link in links(host, "bridge"):
            name = link["ifname"]
            if name.startswith("cv") and name not in bridges_of:
                out.append(f"{host.name}: bridge {name} of no network")
        for link in links(host, "vxlan"):
            name = link["ifname"]
            devices = {"cvx" + nid[:12] for net, nid in overlay_ids.items() if net in nets_here}
            if name.startswith("cvx") and name not in devices:
                out.append(f"{host.name}: VXLAN device {name} without an endpoint here")
        for net in nets_here & set(overlay_ids):
            if not any(
                link["ifname"] == "cvx" + overlay_ids[net][:12] for link in links(host, "vxlan")
            ):
                out.append(f"{host.name}: no VXLAN device for {net}")
        # Published ports: exactly those of this node's containers that have
        # an address to send them to (cove publishes a stopped container's
        # ports too; a container on no network publishes nothing).
        addressed = {ep["container_id"] for ep in eps_here.values() if ep.get("ipv4")}
        want_ports = {
            PortMapping.parse(text).host_port
            for cid, name in mine.items()
            if cid in addressed
            for text in store.containers[name].get("ports") or []
        }
        have_ports = port_claims(host)
        if want_ports != have_ports:
            out.append(f"{host.name}: ports {sorted(have_ports)} != store {sorted(want_ports)}")
    # Port claims in the store: exactly one per published port of each
    # container, under the container's node.
    claims = {key.split("/", 2)[2]: value.get("id") for key, value in store.ports.items()}
    wanted_claims = {
        f"{PortMapping.parse(text).host_port}@{container_node(c)}": c["id"]
        for c in store.containers.values()
        for text in c.get("ports") or []
    }
    if claims != wanted_claims:
        out.append(f"port claims {claims} != the containers' ports {wanted_claims}")
    for name, count in running_on.items():
        if count > 1:
            out.append(f"{name} runs on {count} hosts")
    return out


def converge(cluster: Cluster, timeout: float = CONVERGE) -> list[str]:
    deadline = time.monotonic() + timeout
    found = problems(cluster)
    if found:
        print("not yet converged:", *found, sep="\n  ")
    while found and time.monotonic() < deadline:
        time.sleep(1.0)
        found = problems(cluster)
    return found


# -- the chaos ------------------------------------------------------------


@dataclass
class Chaos:
    cluster: Cluster
    rng: random.Random
    live: dict[str, set[str]] = field(default_factory=dict)  # name -> its networks
    last_error: str = ""
    errors: list[str] = field(default_factory=list)
    done: dict[str, int] = field(default_factory=dict)
    succeeded: dict[str, int] = field(default_factory=dict)
    next_port: int = 21000

    def host(self) -> Host:
        return self.rng.choice(self.cluster.hosts)

    def do(self, host: Host, *args: str) -> bool:
        """``cove ARGS`` on ``host``; true when it succeeded. The CLI runs in
        this process (a fresh interpreter per command costs a second on a
        loaded machine, and 200 of them would dominate the test)."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main(["--socket", str(host.agent.socket), *args])
        op = args[0] if args[0] != "network" else f"network {args[1]}"
        self.done[op] = self.done.get(op, 0) + 1
        self.last_error = err.getvalue()
        self.succeeded[op] = self.succeeded.get(op, 0) + (code == 0)
        if code != 0:
            alive = host.agent.proc is not None and host.agent.proc.poll() is None
            text = err.getvalue().strip()
            msg = text.splitlines()[-1:] if text else [f"exit {code}"]
            self.errors.append(
                f"{host.name}{'' if alive else ' (down)'}: cove {' '.join(args)}: {msg[0][:160]}"
            )
        return code == 0

    def step(self, host: Host) -> None:
        rng = self.rng
        choices = ["run"] * 3 + ["rm"] * 2 + ["stop", "start", "connect", "disconnect"]
        op = rng.choice(choices)
        if op == "run" or not self.live:
            free = [n for n in NAMES if n not in self.live]
            if len(self.live) >= MAX_CONTAINERS or not free:
                op = "rm"
            else:
                name, net = rng.choice(free), rng.choice(RUN_NETWORKS)
                extra: list[str] = []
                if rng.random() < 0.25:
                    self.next_port += 1
                    extra = ["-p", f"{self.next_port}:80"]
                self.do(host, "run", "-d", "--name", name, "--network", net, *extra,
                        "--", "sleep", "600")  # fmt: skip
                # Kept even when it failed: a kill may have cut the answer
                # off after the container was made.
                self.live[name] = {net}
                return
        name = rng.choice(sorted(self.live))
        nets = self.live[name]
        if op == "rm":
            if self.do(host, "rm", "-f", name) or "not found" in self.last_error:
                del self.live[name]
        elif op == "stop":
            self.do(host, "stop", "-t", "1", name)
        elif op == "start":
            self.do(host, "start", name)
        else:
            # Mostly a change that applies; sometimes one that is refused.
            on = sorted(nets) if op == "disconnect" else sorted(set(NETWORKS) - nets)
            net = rng.choice(on if on and rng.random() < 0.85 else list(NETWORKS))
            if self.do(host, "network", op, net, name):
                if op == "connect":
                    nets.add(net)
                else:
                    nets.discard(net)


def test_kill9_during_random_operations_then_every_host_matches_the_store(
    cluster: Cluster,
) -> None:
    seed = int(os.environ.get("COVE_CHAOS_SEED", str(random.SystemRandom().randrange(1 << 32))))
    print(f"chaos seed {seed} ({OPS} operations); rerun with COVE_CHAOS_SEED={seed}")
    rng = random.Random(seed)
    h1 = cluster.host(1)
    for net, (driver, subnet) in NETWORKS.items():
        h1.ok("network", "create", net, "--driver", driver, "--subnet", subnet)
    chaos = Chaos(cluster, rng)
    kills = sorted(rng.sample(range(5, OPS - 5), rng.randint(*KILLS)))
    # A killed agent comes back from a thread after a random pause while
    # the operations go on (a request for its containers waits for it).
    # A kill lands at a random moment, often in the middle of the next
    # operation on the host it hits (from a thread), and the agent comes
    # back after a random pause while the operations go on (a request for
    # its containers waits for it).
    chaos_threads: dict[int, threading.Thread] = {}
    thread_errors: list[BaseException] = []

    def kill_and_restart(host: Host, delay: float, pause: float) -> None:
        try:
            time.sleep(delay)
            host.kill9()
            time.sleep(pause)
            host.start()
        except BaseException as exc:
            thread_errors.append(exc)

    started = time.monotonic()
    for i in range(OPS):
        host = chaos.host()
        if kills and i == kills[0]:
            kills.pop(0)
            victim = host if rng.random() < 0.6 else chaos.host()
            if victim.number in chaos_threads:
                chaos_threads.pop(victim.number).join()
            delay, pause = rng.uniform(0.0, 0.5), rng.uniform(0.0, 3.0)
            print(f"op {i}: kill -9 {victim.name} in {delay:.2f} s, back {pause:.1f} s later")
            thread = threading.Thread(target=kill_and_restart, args=(victim, delay, pause))
            thread.start()
            chaos_threads[victim.number] = thread
        chaos.step(host)
    for thread in chaos_threads.values():
        thread.join()
    assert thread_errors == []
    ops_time = time.monotonic() - started
    print(f"{OPS} operations in {ops_time:.1f} s: {chaos.done}")
    print(f"succeeded: {chaos.succeeded}; {len(chaos.errors)} errors (tolerated):")
    for err in chaos.errors:
        print("  ", err)
    # Not a vacuous run: every kind of operation did something, and a good
    # share of all of them did. (Operations take ~90 ms and an agent is down
    # for seconds, so a third of a host's operations can meet it down: how
    # many of one kind succeed depends on the seed.)
    assert min(chaos.succeeded.get(op, 0) for op in ("run", "rm", "stop", "start")) >= 2
    assert sum(chaos.succeeded.values()) >= OPS // 4

    # kill -9 of every agent, then a restart of every one.
    for host in cluster.hosts:
        host.kill9()
    for host in cluster.hosts:
        host.start()
    found = converge(cluster)
    print(f"converged in {time.monotonic() - started - ops_time:.1f} s after the operations")
    assert found == [], "\n".join(found)
    # Every record is listed, with its node, the same on every host.
    listed = [
        {c["name"]: c["node"] for c in json.loads(h.ok("ps", "-a", "--format", "json"))}
        for h in cluster.hosts
    ]
    store = StoreView.read(cluster)
    assert (
        listed[0]
        == listed[1]
        == listed[2]
        == {n: container_node(c) for n, c in store.containers.items()}
    )
    # Each name is claimed once, for the container under that node's keys.
    claims = {k.rsplit("/", 1)[1]: v for k, v in etcd_prefix(cluster, "cluster/names/").items()}
    assert claims == {
        n: {"node": container_node(c), "id": c["id"]} for n, c in store.containers.items()
    }

    # Remove everything, from random hosts: every host is clean.
    for name in sorted(store.containers):
        chaos.host().ok("rm", "-f", name)
    for net in NETWORKS:
        chaos.host().ok("network", "rm", net)
    found = converge(cluster, 20.0)
    assert found == [], "\n".join(found)
    store = StoreView.read(cluster)
    assert (store.containers, store.endpoints, store.ipam, store.networks) == ({}, [], {}, {})
    assert store.ports == {}
    assert etcd_prefix(cluster, "cluster/names/") == {}
    for host in cluster.hosts:
        assert host.container_netns() == [], host.name
        assert host.veths() == [], host.name
        assert [x["ifname"] for x in links(host, "bridge") if x["ifname"].startswith("cv")] == []
        assert [x["ifname"] for x in links(host, "vxlan")] == [], host.name
        assert supervisor_children(host) == [], host.name
        assert port_claims(host) == set(), host.name
    # The check sees a leak: a stray cove-named veth on h2 is reported.
    h2 = cluster.host(2)
    h2.ip("link", "add", "cv0c0ffee000", "type", "veth", "peer", "name", "cvtchaos0")
    try:
        assert problems(cluster) == ["h2: veth cv0c0ffee000 without an endpoint here"]
    finally:
        h2.ip("link", "del", "cv0c0ffee000")
