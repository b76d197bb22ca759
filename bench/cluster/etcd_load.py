"""etcd load of one cove agent: requests and bytes per idle minute and per
container start, read from etcd's own /metrics.

    .venv/bin/python bench/cluster/etcd_load.py [--idle 60] [--containers 10]

As root. In a fresh network namespace that plays the host: a private etcd
(one member, loopback, temp data dir, stopped by PID) and a real `cove agent
--store etcd://...` (reconcile interval at its default). Then:

1. idle: the agent with one network and nothing else, ``--idle`` seconds;
2. per container start: ``cove run -d --network ... --service ...`` N times
   (a container with a registered service and its TCP check), counted from
   the first run until the agent is quiet again, divided by N;
3. idle again with those N containers running (what steady containers and
   their passing checks cost);
4. fan-out (``--fanout N``, 0 to skip): two hosts (``tests/cluster.py``: a
   fabric namespace with etcd, one namespace per host, veths between), one
   network holding N existing containers (their container, endpoint and
   IPAM records, cloned from a real one and owned by a node that is not
   running); h2 starts ``--starts`` containers and the bytes h1 (the other
   agent, which has nothing to do with them) receives are counted on its
   veth (every byte etcd sent it, with TCP/IP headers), beside etcd's own
   totals for both agents.

Counted on etcd's side: ``grpc_server_started_total`` by method (the JSON
gateway's requests are gRPC calls into the same member, so every request the
agent makes appears there once) and
``etcd_network_client_grpc_{received,sent}_bytes_total``. No peer runs here:
no other container network agent on etcd is installed on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from cove.agent.teardown import teardown

# bench/ is not a package: its shared helpers (and the tests' etcd fixture)
# are found by path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "tests"))
import nsutil
from cluster import Host, make_cluster
from etcd_fixture import EtcdLoad, EtcdProcess, etcd_process
from fanout import FabricMember, clones, remove, rx_bytes, settle
from hostns import host_namespace

COVE = [sys.executable, "-m", "cove.cli.main"]
FAN_SUBNET = "10.88.0.0/16"


def start_agent(work: Path, store_url: str) -> subprocess.Popen[bytes]:
    log = open(work / "agent.log", "ab")  # noqa: SIM115 - lives as long as the agent
    proc = subprocess.Popen(
        [*COVE, "agent", "--state-dir", str(work / "state"), "--socket", str(work / "agent.sock"),
         "--http", "127.0.0.1:18500", "--dns", "127.0.0.1:18600", "--upstream", "127.0.0.1:5399",
         "--store", store_url, "--log-level", "warning", "--node-name", "bench1"],
        stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if cli(work, "network", "ls", "-q", check=False).returncode == 0:
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise SystemExit("the agent did not start: " + (work / "agent.log").read_text()[-2000:])


def cli(work: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COVE_SOCKET": str(work / "agent.sock")}
    res = subprocess.run([*COVE, *args], env=env, capture_output=True, text=True, timeout=120)
    if check and res.returncode != 0:
        raise SystemExit(f"cove {' '.join(args)} failed: {res.stderr}")
    return res


def window(member: EtcdProcess | FabricMember, seconds: float) -> EtcdLoad:
    before = member.metrics()
    time.sleep(seconds)
    return member.metrics() - before


def show(label: str, load: EtcdLoad, per: float, unit: str) -> None:
    calls = ", ".join(f"{k} {v / per:.1f}" for k, v in sorted(load.calls.items()) if v)
    print(
        f"{label:34} {load.requests / per:8.1f} req/{unit}  "
        f"{load.received / per / 1024:7.1f} kB in  {load.sent / per / 1024:7.1f} kB out  "
        f"({calls})"
    )


def cache_bytes(host: Host) -> float:
    """What the host's agent holds in its watch cache (its metrics)."""
    with nsutil.entered(host.netns):
        url = f"http://127.0.0.1:{host.agent.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
    for line in text.splitlines():
        if line.startswith("cove_watch_cache_bytes "):
            return float(line.split()[1])
    return 0.0


def fanout(existing: int, starts: int) -> tuple[int, int, EtcdLoad, float, int, float]:
    """(bytes h1 received, bytes h2 received, etcd's load, bytes of h1's
    cache per existing container) for ``starts`` container starts on h2
    with ``existing`` containers in the network; then, once h1 has a
    container on the network too (it follows the network from then on),
    the bytes h1 received for as many starts on h2 and its cache per
    existing container."""
    work = Path(tempfile.mkdtemp(prefix="cove-bench-fanout-"))
    try:
        with make_cluster(work, 2, "--reconcile-interval", "15", "--log-level", "info") as cl:
            h1, h2 = cl.hosts
            member = FabricMember(cl.fabric)
            h2.ok("network", "create", "fan", "--subnet", FAN_SUBNET)
            h2.ok("run", "-d", "--name", "seed", "--network", "fan", "--service", "seed:80",
                  "--", "sleep", "3600")  # fmt: skip
            settle(member)
            cached = cache_bytes(h1)
            keys = clones(member, "seed", "fan", FAN_SUBNET, existing)
            settle(member, quiet=5.0)
            time.sleep(16)  # past one periodic pass of every watcher
            settle(member, quiet=3.0)
            per_container = (cache_bytes(h1) - cached) / existing
            before = member.metrics()
            rx1, rx2 = rx_bytes(h1.netns), rx_bytes(h2.netns)
            for i in range(starts):
                h2.ok("run", "-d", "--name", f"new{i}", "--network", "fan",
                      "--service", f"new{i}:80", "--", "sleep", "3600")  # fmt: skip
                settle(member)
            load = member.metrics() - before
            got1, got2 = rx_bytes(h1.netns) - rx1, rx_bytes(h2.netns) - rx2
            # h1 joins the network: from now on it follows its endpoints.
            h1.ok("run", "-d", "--name", "here", "--network", "fan", "--", "sleep", "3600")
            settle(member)
            joined = (cache_bytes(h1) - cached) / existing
            rx1 = rx_bytes(h1.netns)
            for i in range(starts, 2 * starts):
                h2.ok("run", "-d", "--name", f"new{i}", "--network", "fan",
                      "--service", f"new{i}:80", "--", "sleep", "3600")  # fmt: skip
                settle(member)
            on_network = rx_bytes(h1.netns) - rx1
            for i in range(2 * starts):
                h2.cli("rm", "-f", f"new{i}")
            h1.cli("rm", "-f", "here")
            h2.cli("rm", "-f", "seed")
            remove(member, keys)
        return got1, got2, load, per_container, on_network, joined
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=60.0, help="seconds per idle window")
    parser.add_argument("--containers", type=int, default=10)
    parser.add_argument("--fanout", type=int, default=500, help="existing containers (0: skip)")
    parser.add_argument("--starts", type=int, default=5, help="container starts in the fan-out")
    parser.add_argument("--skip-single", action="store_true", help="only the fan-out")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (namespaces, bridges)")
    if not 1 <= args.containers <= 100 or not 5 <= args.idle <= 600:
        raise SystemExit("--containers 1..100, --idle 5..600 seconds")
    if not 0 <= args.fanout <= 5000 or not 1 <= args.starts <= 20:
        raise SystemExit("--fanout 0..5000, --starts 1..20")
    if args.fanout:
        got1, got2, load, per_container, on_network, joined = fanout(args.fanout, args.starts)
        k = args.starts
        print(f"\nfan-out: {k} container starts on h2, {args.fanout} containers in the network")
        print(f"{'bytes the other agent (h1) received':34} {got1 / k / 1024:8.1f} kB/start")
        print(f"{'bytes the starting agent (h2) rcvd':34} {got2 / k / 1024:8.1f} kB/start")
        show("etcd, both agents", load, k, "start")
        print(f"{'the other agent cache, per container':34} {per_container / 1024:8.2f} kB")
        print("once h1 has a container on the network (it follows the network):")
        print(f"{'bytes h1 received':34} {on_network / k / 1024:8.1f} kB/start")
        print(f"{'h1 cache, per container':34} {joined / 1024:8.2f} kB")
    if args.skip_single:
        return 0
    work = Path(tempfile.mkdtemp(prefix="cove-bench-etcd-"))
    minutes = args.idle / 60
    with host_namespace() as ns, etcd_process() as member:
        print(f"host namespace {ns}, etcd {member.url}, work dir {work}")
        proc = start_agent(work, f"etcd://{member.hostport}")
        try:
            cli(work, "network", "create", "bnet", "--subnet", "10.87.0.0/24")
            settle(member)
            idle = window(member, args.idle)
            before = member.metrics()
            for i in range(args.containers):
                cli(work, "run", "-d", "--name", f"c{i}", "--network", "bnet",
                    "--service", f"svc{i}:80", "--", "sleep", "3600")  # fmt: skip
            settle(member)
            starts = member.metrics() - before
            busy = window(member, args.idle)
            for i in range(args.containers):
                cli(work, "rm", "-f", f"c{i}", check=False)
            cli(work, "network", "rm", "bnet", check=False)
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            if proc.poll() is None:
                proc.kill()
            teardown(work / "state" / "run")
    n = args.containers
    print(f"\netcd load of one agent (idle windows of {args.idle:g} s, {n} container starts)")
    show("idle agent, one network", idle, minutes, "min")
    show("per container start (+service)", starts, n, "start")
    show(f"idle agent, {n} containers running", busy, minutes, "min")
    per_container = (busy.requests - idle.requests) / minutes / n
    print(f"{'':34} {per_container:8.2f} req/min per running container beyond the idle agent")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
