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
import base64
import contextlib
import http.client
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cove.agent.teardown import teardown

# bench/ is not a package: its shared helpers (and the tests' etcd fixture)
# are found by path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "tests"))
import nsutil
from cluster import ETCD_PORT, FABRIC_ADDRESS, make_cluster
from etcd_fixture import EtcdLoad, EtcdProcess, etcd_process
from hostns import host_namespace

COVE = [sys.executable, "-m", "cove.cli.main"]


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


def settle(member: EtcdProcess | FabricMember, quiet: float = 3.0, limit: float = 60.0) -> None:
    """Wait until etcd sees no write for ``quiet`` seconds (the agent has
    finished what the last command started)."""
    deadline = time.monotonic() + limit
    last = member.metrics()
    calm_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = member.metrics()
        writes = sum((now - last).calls.get(m, 0) for m in ("Put", "Txn", "DeleteRange"))
        last = now
        if writes:
            calm_since = time.monotonic()
        elif time.monotonic() - calm_since >= quiet:
            return


def show(label: str, load: EtcdLoad, per: float, unit: str) -> None:
    calls = ", ".join(f"{k} {v / per:.1f}" for k, v in sorted(load.calls.items()) if v)
    print(
        f"{label:34} {load.requests / per:8.1f} req/{unit}  "
        f"{load.received / per / 1024:7.1f} kB in  {load.sent / per / 1024:7.1f} kB out  "
        f"({calls})"
    )


class FabricMember:
    """The cluster fixture's etcd, reached from inside the fabric namespace."""

    def __init__(self, fabric: str) -> None:
        self.fabric = fabric

    def _http(self, method: str, path: str, body: object = None) -> bytes:
        with nsutil.entered(self.fabric):
            conn = http.client.HTTPConnection(FABRIC_ADDRESS, ETCD_PORT, timeout=10)
            try:
                conn.request(method, path, body=None if body is None else json.dumps(body))
                return conn.getresponse().read()
            finally:
                conn.close()

    def metrics(self) -> EtcdLoad:
        return EtcdLoad.parse(self._http("GET", "/metrics").decode())

    def range(self, prefix: str) -> list[tuple[str, bytes]]:
        body = {"key": _b64(prefix), "range_end": _end(prefix)}
        answer = json.loads(self._http("POST", "/v3/kv/range", body))
        return [(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv.get("value", "")))
                for kv in answer.get("kvs", ())]  # fmt: skip

    def delete_prefix(self, prefix: str) -> None:
        self._http("POST", "/v3/kv/deleterange", {"key": _b64(prefix), "range_end": _end(prefix)})

    def put_many(self, items: list[tuple[str, bytes]]) -> None:
        for i in range(0, len(items), 100):  # under etcd's --max-txn-ops (128)
            ops = [{"request_put": {"key": _b64(k), "value": base64.b64encode(v).decode()}}
                   for k, v in items[i : i + 100]]  # fmt: skip
            self._http("POST", "/v3/kv/txn", {"success": ops})


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _end(prefix: str) -> str:
    return _b64(prefix[:-1] + chr(ord(prefix[-1]) + 1))


def rx_bytes(netns: str) -> int:
    """Bytes the host's fabric link (eth0) received: all it read from etcd."""
    out = nsutil.run("ip", "-n", netns, "-j", "-s", "link", "show", "eth0").stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["bytes"])


def clones(seed: dict[str, bytes], count: int) -> list[tuple[str, bytes]]:
    """``count`` containers like the seed's (container, endpoint and IPAM
    records) on node ``ghost``, which runs no agent: every agent sees them,
    none builds them."""
    ((ckey, craw),) = [(k, v) for k, v in seed.items() if k.startswith("containers/")]
    ((ekey, eraw),) = [(k, v) for k, v in seed.items() if k.startswith("endpoints/")]
    ((ikey, iraw),) = [(k, v) for k, v in seed.items() if k.startswith("ipam/")]
    net = ekey.split("/")[1]
    out = []
    for i in range(count):
        cid = secrets.token_hex(32)
        name = f"ghost{i}"
        addr = f"10.88.{1 + i // 250}.{2 + i % 250}"
        c = {**json.loads(craw), "id": cid, "name": name, "hostname": cid[:12], "node": "ghost"}
        e = {**json.loads(eraw), "container_id": cid, "container_name": name, "ipv4": addr,
             "host_veth": "cv" + cid[:10], "node": "ghost",
             "mac": f"02:42:0a:58:{1 + i // 250:02x}:{2 + i % 250:02x}"}  # fmt: skip
        ipam = {**json.loads(iraw), "owner": cid}
        out += [
            (ckey.rsplit("/", 1)[0] + "/" + name, json.dumps(c).encode()),
            (f"endpoints/{net}/{cid}", json.dumps(e).encode()),
            (f"ipam/{net}/{addr}", json.dumps(ipam).encode()),
        ]
    return out


def fanout(existing: int, starts: int) -> tuple[int, int, EtcdLoad]:
    """(bytes h1 received, bytes h2 received, etcd's load) for ``starts``
    container starts on h2 with ``existing`` containers in the network."""
    work = Path(tempfile.mkdtemp(prefix="cove-bench-fanout-"))
    try:
        with make_cluster(work, 2, "--reconcile-interval", "15", "--log-level", "info") as cl:
            h1, h2 = cl.hosts
            member = FabricMember(cl.fabric)
            h2.ok("network", "create", "fan", "--subnet", "10.88.0.0/16")
            h2.ok("run", "-d", "--name", "seed", "--network", "fan", "--service", "seed:80",
                  "--", "sleep", "3600")  # fmt: skip
            settle(member)
            seed = dict(member.range("containers/seed") + member.range("endpoints/fan/")
                        + member.range("ipam/fan/"))  # fmt: skip
            member.put_many(clones(seed, existing))
            settle(member, quiet=5.0)
            time.sleep(16)  # past one periodic pass of every watcher
            settle(member, quiet=3.0)
            before = member.metrics()
            rx1, rx2 = rx_bytes(h1.netns), rx_bytes(h2.netns)
            for i in range(starts):
                h2.ok("run", "-d", "--name", f"new{i}", "--network", "fan",
                      "--service", f"new{i}:80", "--", "sleep", "3600")  # fmt: skip
                settle(member)
            load = member.metrics() - before
            got1, got2 = rx_bytes(h1.netns) - rx1, rx_bytes(h2.netns) - rx2
            for i in range(starts):
                h2.cli("rm", "-f", f"new{i}")
            h2.cli("rm", "-f", "seed")
            # The clones: gone before the agents' clean-up prunes the network.
            for prefix in ("containers/ghost", "endpoints/fan/", "ipam/fan/"):
                member.delete_prefix(prefix)
        return got1, got2, load
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
        got1, got2, load = fanout(args.fanout, args.starts)
        k = args.starts
        print(f"\nfan-out: {k} container starts on h2, {args.fanout} containers in the network")
        print(f"{'bytes the other agent (h1) received':34} {got1 / k / 1024:8.1f} kB/start")
        print(f"{'bytes the starting agent (h2) rcvd':34} {got2 / k / 1024:8.1f} kB/start")
        show("etcd, both agents", load, k, "start")
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
