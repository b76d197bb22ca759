"""bench/overlay: TCP throughput container -> container across two hosts
through cove's overlay, beside a hand-built VXLAN between the same two hosts
(the peer: the floor any VXLAN overlay reaches) and beside two containers on
the same host's bridge (what the overlay costs over staying local).

"Hosts" are network namespaces on a fabric bridge (every address lives in
namespaces this script makes, all removed at the end). cove's side is built
by cove's own overlay reconciler and datapath (``cove.network.overlay`` on a
``NetlinkDatapath`` in each host namespace, the code the agent runs), with
its port filter; the peer is made with ``ip`` commands: a VXLAN device with
the same settings (learning off, MTU 1450) plugged into a bridge. Each
figure is the median of ROUNDS iperf3 runs of SECONDS seconds, taken in turn
so that noise from other work on the machine falls on all three alike.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import nsutil
from cove.clock import ManualClock
from cove.datapath.netlink import NetlinkDatapath
from cove.model import ENDPOINTS, Endpoint, Network
from cove.network.overlay import CLUSTER_NODES, OverlayReconciler
from cove.network.service import NetworkService
from cove.network.spec import NetworkSpec
from cove.store.memory import MemoryStore

ROUNDS = 3
SECONDS = 3
NAME_RUNS = 50  # cove run on h1 -> the name answers on h3, three agents on etcd
FABRIC = "198.51.100."


def sh(*args: str) -> str:
    return subprocess.run(list(args), check=True, capture_output=True, text=True).stdout


def container(stack: contextlib.ExitStack, host: str, bridge: str, mac: str, cidr: str) -> str:
    ns = stack.enter_context(nsutil.namespace("cvbc"))
    veth = nsutil.unique("cvbv")
    sh("ip", "-n", host, "link", "add", veth, "mtu", "1450", "type", "veth", "peer", "name",
       "eth0", "netns", ns)  # fmt: skip
    sh("ip", "-n", host, "link", "set", veth, "master", bridge, "up")
    sh("ip", "-n", ns, "link", "set", "eth0", "address", mac, "mtu", "1450", "up")
    sh("ip", "-n", ns, "addr", "add", cidr, "dev", "eth0")
    return ns


def iperf(server_ns: str, client_ns: str, address: str) -> float:
    """Gbit/s of one TCP stream, client -> server."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        out = sh("ip", "netns", "exec", client_ns, "iperf3", "-J", "-c", address,
                 "-t", str(SECONDS))  # fmt: skip
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


@contextlib.contextmanager
def world() -> Iterator[dict[str, str]]:
    with contextlib.ExitStack() as stack:
        fabric = stack.enter_context(nsutil.namespace("cvbf"))
        sh("ip", "-n", fabric, "link", "add", "fab", "type", "bridge")
        sh("ip", "-n", fabric, "link", "set", "fab", "up")
        hosts: dict[str, str] = {}
        for i in (1, 2):
            ns = stack.enter_context(nsutil.namespace("cvbh"))
            port = nsutil.unique("cvbp")
            sh("ip", "link", "add", port, "netns", fabric, "type", "veth", "peer", "name",
               "uplink", "netns", ns)  # fmt: skip
            sh("ip", "-n", fabric, "link", "set", port, "master", "fab", "up")
            sh("ip", "-n", ns, "addr", "add", f"{FABRIC}{10 + i}/24", "dev", "uplink")
            sh("ip", "-n", ns, "link", "set", "uplink", "up")
            hosts[f"h{i}"] = ns
        store = MemoryStore(ManualClock())
        svc = NetworkService(store, ManualClock())
        spec = NetworkSpec.from_json(
            {"name": "ov", "driver": "overlay", "subnets": ["10.203.0.0/24"]}
        )
        net, _ = svc.create(spec)
        for i, h in enumerate(("h1", "h2"), start=1):
            store.put(CLUSTER_NODES + h, json.dumps({"name": h, "advertise": f"{FABRIC}{10 + i}"}))
        eps = {
            "c1": endpoint(store, net, 2, "h1"),
            "c2": endpoint(store, net, 3, "h2"),
            "c3": endpoint(store, net, 4, "h1"),
        }
        for h, i in (("h1", 1), ("h2", 2)):
            with nsutil.entered(hosts[h]):
                dp = NetlinkDatapath()
                stack.callback(dp.close)
                dp.enable_forwarding()
                OverlayReconciler(store, dp, h, f"{FABRIC}{10 + i}").run_once()
        out = {
            name: container(stack, hosts[host], net.bridge, eps[name].mac, f"{eps[name].ipv4}/24")
            for name, host in (("c1", "h1"), ("c2", "h2"), ("c3", "h1"))
        }
        # The peer: the same VXLAN made by hand, another VNI and port.
        for h, me, peer in (("h1", 11, 12), ("h2", 12, 11)):
            sh("ip", "-n", hosts[h], "link", "add", "pbr", "type", "bridge")
            sh("ip", "-n", hosts[h], "link", "add", "pvx", "mtu", "1450", "type", "vxlan",
               "id", "99", "local", f"{FABRIC}{me}", "remote", f"{FABRIC}{peer}",
               "dstport", "4790", "nolearning")  # fmt: skip
            sh("ip", "-n", hosts[h], "link", "set", "pvx", "master", "pbr", "up")
            sh("ip", "-n", hosts[h], "link", "set", "pbr", "up")
        out["p1"] = container(stack, hosts["h1"], "pbr", "02:42:0a:cc:00:02", "10.204.0.2/24")
        out["p2"] = container(stack, hosts["h2"], "pbr", "02:42:0a:cc:00:03", "10.204.0.3/24")
        yield out


def endpoint(store: MemoryStore, net: Network, n: int, node: str) -> Endpoint:
    ep = Endpoint(
        id=f"{n:012x}",
        network=net.name,
        container_id=f"c{n}",
        container_name=f"c{n}",
        interface="eth0",
        host_veth=f"cv{n:010x}",
        mac=f"02:42:0a:cb:00:{n:02x}",
        ipv4=ipaddress.IPv4Address(f"10.203.0.{n}"),
    )
    store.put(f"{ENDPOINTS}{net.name}/{ep.id}", json.dumps({**ep.to_json(), "node": node}))
    return ep


def _fmt(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def name_latency(tmp: Path) -> tuple[list[float], list[float]]:
    """Seconds from the start of `cove run` on h1 until h3's agent answers
    the container's name (its DNS, in h3's namespace), NAME_RUNS times;
    and of those, the seconds after `cove run` returned."""
    from cluster import make_cluster

    out: list[float] = []
    after: list[float] = []
    with make_cluster(tmp, 3) as cluster:
        h1, _h2, h3 = cluster.hosts
        h1.ok("network", "create", "ov", "--driver", "overlay", "--subnet", "10.208.0.0/24")
        h3.ok("run", "-d", "--name", "watcher", "--network", "ov", "--", "sleep", "3600")
        for i in range(NAME_RUNS):
            name = f"n{i}"
            t0 = time.perf_counter()
            h1.ok("run", "-d", "--name", name, "--network", "ov", "--", "sleep", "3600")
            t1 = time.perf_counter()
            while True:
                res = subprocess.run(
                    ["ip", "netns", "exec", h3.netns, "dig", "@127.0.0.1", "-p",
                     str(h3.agent.dns_port), "+short", "+tries=1", "+time=1", f"{name}.ov.cove"],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                if res.stdout.strip():
                    break
                if time.perf_counter() - t0 > 10:
                    raise RuntimeError(f"{name} never resolved on h3")
            out.append(time.perf_counter() - t0)
            after.append(time.perf_counter() - t1)
            h1.ok("rm", "-f", name)
    return out, after


def main() -> int:
    with world() as ns:
        runs: dict[str, list[float]] = {"cove": [], "peer": [], "bridge": []}
        for _ in range(ROUNDS):
            runs["cove"].append(iperf(ns["c2"], ns["c1"], "10.203.0.3"))
            runs["peer"].append(iperf(ns["p2"], ns["p1"], "10.204.0.3"))
            runs["bridge"].append(iperf(ns["c3"], ns["c1"], "10.203.0.4"))
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"iperf3 TCP, 1 stream, {SECONDS} s, median of {ROUNDS} (Gbit/s)")
    print(f"  cove overlay, h1 -> h2        {med['cove']:7.2f}   runs {_fmt(runs['cove'])}")
    print(f"  hand-built VXLAN, h1 -> h2    {med['peer']:7.2f}   runs {_fmt(runs['peer'])}")
    print(f"  same bridge, on h1            {med['bridge']:7.2f}   runs {_fmt(runs['bridge'])}")
    print(f"  cove / hand-built VXLAN  {med['cove'] / med['peer']:.2f}x  (goal >= 0.95x)")
    print(f"  cove / same bridge       {med['cove'] / med['bridge']:.2f}x")
    if "--no-names" in sys.argv:
        return 0
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cove-bench-overlay-") as tmp:
        total, after = name_latency(Path(tmp))
    print(f"cove run on h1 -> name answers on h3 ({len(total)} runs, 3 agents on one etcd)")
    print(f"  from the start of cove run    {_pct(total)}  (goal p99 <= 1000 ms)")
    print(f"  after cove run returned       {_pct(after)}")
    return 0


def _pct(samples: list[float]) -> str:
    lat = sorted(samples)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return (
        f"p50 {statistics.median(lat) * 1e3:6.0f} ms  p99 {p99 * 1e3:6.0f} ms  "
        f"max {lat[-1] * 1e3:6.0f} ms"
    )


if __name__ == "__main__":
    sys.exit(main())
