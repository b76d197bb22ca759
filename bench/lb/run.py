"""Benchmark: service VIPs and network policy against the bare datapath.

    .venv/bin/python bench/lb/run.py [--quick]

Everything runs in network namespaces this script creates (a "host"
namespace with a bridge, and container namespaces plugged into it) and
removes at the end, even on failure. Prints, side by side:

1. TCP connection rate through a VIP (4 backends) vs directly to one backend
   (goal ratio >= 0.9);
2. iperf3 throughput through a VIP vs directly, and between two containers
   with 100 policy rules loaded (default-deny) vs the bare bridge (>= 0.95);
3. 1,000 services x 10 backends: time from one backend's health change (a
   store write) to the rules in place (p50/p99, goal p99 <= 100 ms), next to
   a naive full-table replace per change; and a full resync as after an
   agent restart (goal <= 5 s).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable

SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', int(sys.argv[1])))
s.listen(4096)
print('ready', flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""

RATE_CLIENT = r"""
import os, socket, sys, time
addr, port, seconds, workers = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
LINGER0 = b'\x01' + b'\x00' * 7  # close with RST: no TIME_WAIT pile-up
pipes = []
for _ in range(workers):
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        n = fails = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                c = socket.create_connection((addr, port), timeout=2)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
                c.recv(1)
                c.close()
                n += 1
            except OSError:
                fails += 1
        os.write(w, f'{n} {fails}'.encode())
        os._exit(0)
    os.close(w)
    pipes.append(r)
total = fails = 0
for r in pipes:
    a, b = os.read(r, 100).split()
    total += int(a); fails += int(b)
for _ in pipes:
    os.wait()
print(total / seconds, fails)
"""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


def nsx(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *args]


class Lab:
    """Inside the bench's host namespace: a bridge 10.66.0.1/24 and
    container namespaces."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.stack = stack
        self.bridge = "cvbb" + secrets.token_hex(3)
        self.ns: dict[str, str] = {}
        self.addr: dict[str, str] = {}
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        stack.callback(sh, "ip", "link", "del", self.bridge, check=False)
        sh("ip", "addr", "add", "10.66.0.1/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        sh("ip", "link", "set", "lo", "up")
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1", check=False)
        sh("ip", "route", "add", "10.96.0.0/16", "dev", self.bridge)

    def add(self, name: str, host: int) -> str:
        ns = "cvbc" + secrets.token_hex(4)
        veth = "cvbv" + secrets.token_hex(4)
        sh("ip", "netns", "add", ns)
        self.stack.callback(sh, "ip", "netns", "del", ns, check=False)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.stack.callback(sh, "ip", "link", "del", veth, check=False)
        sh("ip", "link", "set", veth, "master", self.bridge, "up")
        sh("ip", "link", "set", veth, "type", "bridge_slave", "hairpin", "on")
        sh("ip", "-n", ns, "addr", "add", f"10.66.0.{host}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", "10.66.0.1")
        self.ns[name] = ns
        self.addr[name] = f"10.66.0.{host}"
        return ns

    def spawn(self, name: str, *args: str, ready: bool = False) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            nsx(self.ns[name], *args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.stack.callback(_stop, proc)
        if ready:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


class DictBackends:
    """What the registry provides, kept in the store: ``b/<svc>``."""

    def __init__(self, store: object) -> None:
        self._store = store

    def prefixes(self) -> Sequence[str]:
        return ("b/",)

    def passing(self, services: Collection[str] | None = None) -> Mapping[str, Sequence[object]]:
        from cove.lb.model import Backend

        store = self._store
        out: dict[str, list[object]] = {}
        names = (
            services
            if services is not None
            else [
                kv.key[2:]
                for kv in store.range("b/").kvs  # type: ignore[attr-defined]
            ]
        )
        for name in names:
            kv = store.get("b/" + name)  # type: ignore[attr-defined]
            if kv is not None:
                out[name] = [
                    Backend(ipaddress.ip_address(a), p, w) for a, p, w in json.loads(kv.value)
                ]
        return out

    def affected(self, events: Sequence[object]) -> set[str] | None:
        return {e.kv.key[2:] for e in events}  # type: ignore[attr-defined]


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def iperf(lab: Lab, target: str, port: int, seconds: int) -> float:
    res = subprocess.run(
        nsx(lab.ns["client"], "iperf3", "-c", target, "-p", str(port), "-t", str(seconds), "-J"),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"])


def conn_rate(lab: Lab, target: str, port: int, seconds: float) -> tuple[float, int]:
    res = subprocess.run(
        nsx(lab.ns["client"], PY, "-c", RATE_CLIENT, target, str(port), str(seconds), "2"),
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rate, fails = res.stdout.split()
    return float(rate), int(fails)


def install_floor(nft: object, floor_ip: str, backend: str) -> None:
    """The kernel's own floor: one hand-written DNAT rule per port."""
    rules = [
        {"rule": {"chain": "pre", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                       "right": floor_ip}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                       "right": port}},
            {"dnat": {"family": "ip", "addr": backend, "port": port}}]}}
        for port in (8080, 5201)
    ]  # fmt: skip
    chain = {"chain": {"name": "pre", "type": "nat", "hook": "prerouting", "prio": -100,
                       "policy": "accept"}}  # fmt: skip
    nft.replace_table("inet", "cove_bfloor", [chain, *rules])  # type: ignore[attr-defined]


def main_inner(quick: bool) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from cove.clock import SystemClock
    from cove.datapath.libnft import open_nft
    from cove.lb import compile as lbc
    from cove.lb.controller import LbController
    from cove.lb.vips import VipService
    from cove.model import Endpoint, Network, Subnet
    from cove.policy.controller import PolicyController
    from cove.policy.service import PolicyService
    from cove.store import MemoryStore
    from cove.store.hub import WatchHub

    seconds = 1.0 if quick else 2.0
    rounds = 2 if quick else 3
    with contextlib.ExitStack() as stack:
        lab = Lab(stack)
        store = MemoryStore(SystemClock())
        nft = open_nft()
        lb = LbController(store, nft, DictBackends(store), clock=SystemClock())  # type: ignore[arg-type]
        hub = WatchHub(store)
        hub.start()
        stack.callback(hub.stop)
        lb.start(hub)
        stack.callback(lb.stop)
        stack.callback(nft.delete_table, "inet", "cove_lb")
        lab.add("client", 2)
        for i in range(4):
            lab.add(f"b{i}", 10 + i)
            lab.spawn(f"b{i}", PY, "-c", SERVER, "8080", ready=True)
        lab.spawn("b0", "iperf3", "-s", "-p", "5201")
        vip = str(VipService(store).assign("web").address)
        one_vip = str(VipService(store).assign("one").address)
        store.put("b/one", json.dumps([[lab.addr["b0"], 8080, 1]]).encode())
        store.put("b/web", json.dumps([[lab.addr[f"b{i}"], 8080, 1] for i in range(4)]).encode())
        rev = store.put("b/iperf", json.dumps([[lab.addr["b0"], 5201, 1]]).encode())
        VipService(store).assign("iperf", port=5201)
        assert lb.wait_applied(store.revision, 10) and rev
        iperf_vip = str(VipService(store).get("iperf").address)
        time.sleep(0.5)

        floor_ip = "10.96.255.254"
        install_floor(nft, floor_ip, lab.addr["b0"])
        stack.callback(nft.delete_table, "inet", "cove_bfloor")

        print("== 1. TCP connection rate (2 client processes, connect+close; medians) ==")
        rates: dict[str, list[float]] = {"direct": [], "vip": [], "floor": [], "vip4": []}
        fails = 0
        for _ in range(rounds):
            for key, target in (
                ("direct", lab.addr["b0"]),
                ("vip", one_vip),
                ("floor", floor_ip),
                ("vip4", vip),
            ):
                rate, f = conn_rate(lab, target, 8080, seconds)
                rates[key].append(rate)
                fails += f
        direct, via, floor, via4 = (median(rates[k]) for k in ("direct", "vip", "floor", "vip4"))
        print(f"direct to one backend : {direct:10.0f} conn/s")
        print(f"VIP of that backend   : {via:10.0f} conn/s   ratio {via / direct:.3f}"
              "  (goal >= 0.9)")  # fmt: skip
        print(f"VIP of 4 backends     : {via4:10.0f} conn/s   ratio {via4 / direct:.3f}"
              "  (4 server processes on a 2-CPU box)")  # fmt: skip
        print(f"one bare DNAT rule    : {floor:10.0f} conn/s   ratio {floor / direct:.3f}"
              f"  (kernel NAT floor; VIP / floor {via / floor:.3f})")  # fmt: skip
        print(f"failed connections    : {fails}")

        print("== 2. iperf3 throughput (medians) ==")
        t = 2 if quick else 3
        # 100 policy rules on a default-deny network, the client's last.
        net = Network(
            id="bn", name="bn", bridge=lab.bridge, default_deny=True,
            subnets=(Subnet(ipaddress.ip_network("10.66.0.0/24"),
                            ipaddress.ip_address("10.66.0.1")),),
        )  # fmt: skip
        store.put("networks/bn", json.dumps(net.to_json()).encode())
        for name in ("client", "b0"):
            ep = Endpoint(
                id=name, network="bn", container_id=name, container_name=name, interface="eth0",
                host_veth="", mac="", ipv4=ipaddress.IPv4Address(lab.addr[name]),
            )  # fmt: skip
            store.put(f"endpoints/bn/{name}", json.dumps(ep.to_json()).encode())
        policy = PolicyService(store, SystemClock())
        for i in range(99):
            policy.allow("bn", f"container:ghost{i}", "b0", [str(6000 + i)])
        policy.allow("bn", "client", "b0", ["5201"])
        pol = PolicyController(store, nft, clock=SystemClock())
        stack.callback(nft.delete_table, "inet", "cove_policy")
        tput: dict[str, list[float]] = {"bare": [], "vip": [], "floor": [], "policy": []}
        for _ in range(rounds):
            nft.delete_table("inet", "cove_policy")
            tput["bare"].append(iperf(lab, lab.addr["b0"], 5201, t))
            tput["vip"].append(iperf(lab, iperf_vip, 5201, t))
            tput["floor"].append(iperf(lab, floor_ip, 5201, t))
            pol.sync(force=True)
            tput["policy"].append(iperf(lab, lab.addr["b0"], 5201, t))
        bare, via, floor, ruled = (
            median(tput[k]) / 1e9 for k in ("bare", "vip", "floor", "policy")
        )
        print(f"bare bridge           : {bare:8.2f} Gbit/s")
        print(f"through the VIP       : {via:8.2f} Gbit/s   ratio {via / bare:.3f}  (goal >= 0.95)")
        print(f"one bare DNAT rule    : {floor:8.2f} Gbit/s   ratio {floor / bare:.3f}"
              f"  (kernel NAT floor; VIP / floor {via / floor:.3f})")  # fmt: skip
        print(f"100 policy rules      : {ruled:8.2f} Gbit/s   ratio {ruled / bare:.3f}"
              "  (goal >= 0.95)")  # fmt: skip
        nft.delete_table("inet", "cove_policy")
        nft.delete_table("inet", "cove_bfloor")

        print("== 3. 1,000 services x 10 backends ==")
        n_svc = 1000
        svcs = VipService(store, [ipaddress.ip_network("10.96.0.0/16")])
        rng = random.Random(7)
        lists: dict[str, list[list[object]]] = {}
        for s in range(n_svc):
            name = f"svc{s}"
            lists[name] = [[f"10.{100 + s // 250}.{s % 250}.{b + 1}", 8080, 1] for b in range(10)]
            store.put("b/" + name, json.dumps(lists[name]).encode())
            svcs.assign(name)
        lb.stop()
        restart = LbController(store, nft, DictBackends(store), clock=SystemClock())  # type: ignore[arg-type]
        t0 = time.monotonic()
        restart.resync()
        resync = time.monotonic() - t0
        restart.start(hub)
        stack.callback(restart.stop)
        lat: list[float] = []
        changes = 60 if quick else 200
        for _ in range(changes):
            name = f"svc{rng.randrange(n_svc)}"
            b = rng.randrange(10)
            cur = lists[name]
            # Health flips: the backend leaves the passing set or comes back.
            new = [x for x in cur if x[0] != f"{cur[0][0].rsplit('.', 1)[0]}.{b + 1}"]  # type: ignore[union-attr]
            if len(new) == len(cur):
                new = [*cur, [f"{str(cur[0][0]).rsplit('.', 1)[0]}.{b + 1}", 8080, 1]]
            lists[name] = new
            t0 = time.monotonic()
            rev = store.put("b/" + name, json.dumps(new).encode())
            assert restart.wait_applied(rev, 10)
            lat.append(time.monotonic() - t0)
            time.sleep(0.01)
        lat.sort()
        p50 = lat[len(lat) // 2] * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        want = restart.desired()
        t0 = time.monotonic()
        for _ in range(3):
            nft.replace_table(lbc.FAMILY, lbc.TABLE, lbc.table_objects(want))
        naive = (time.monotonic() - t0) / 3 * 1000
        print(f"health change -> rules in place, {changes} changes: p50 {p50:.1f} ms, "
              f"p99 {p99:.1f} ms  (goal p99 <= 100 ms)")  # fmt: skip
        print(f"naive full-table replace per change: {naive:.0f} ms  "
              f"(cove's incremental is {naive / p50:.0f}x faster at p50)")  # fmt: skip
        print(f"full resync after a restart ({n_svc} services, {n_svc * 10} backends): "
              f"{resync:.2f} s  (goal <= 5 s)")  # fmt: skip


@contextlib.contextmanager
def host_namespace() -> Iterator[str]:
    name = "cvbh" + secrets.token_hex(4)
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/lb needs root (it builds namespaces)", file=sys.stderr)
        return 2
    if args.inner:
        main_inner(args.quick)
        return 0
    with host_namespace() as ns:
        cmd = nsx(ns, PY, __file__, "--inner", *(["--quick"] if args.quick else []))
        return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
