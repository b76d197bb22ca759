"""Attach and detach network namespaces: cove side by side with the CNI
reference bridge plugin (host-local IPAM), in one run, inside a host
namespace this script creates and removes.

cove: N containers are started with no network (each has its own namespace),
then attached with ``POST /api/networks/<net>/connect`` and detached with
``.../disconnect`` through the agent's Unix socket, as the CLI does. The time
covers the whole path: HTTP, store transaction, IPAM, veth, addresses, route
and /etc/hosts. A detach answers once the pair is out of the container
(down, renamed); the kernel's slow delete (RCU, 15-40 ms) runs after it,
batched; the CNI plugin waits for it.

CNI: N fresh namespaces (``ip netns add``, the same empty namespace a cove
container has), ``/usr/lib/cni/bridge`` run with CNI_COMMAND=ADD and DEL and
the JSON config on stdin, as a runtime calls it.

Then: the agent's and the supervisor's memory with M containers running.

    .venv/bin/python bench/attach/run.py [--count 200] [--memory 500]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cove.agent.teardown import teardown
from cove.cli.client import AgentClient

# bench/ is not a package: its shared helpers are found by path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hostns import host_namespace, ip, start_agent

CNI_BIN = Path("/usr/lib/cni")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def bench_cove(client: AgentClient, count: int) -> tuple[list[float], list[float]]:
    client.request("POST", "/api/networks", {"name": "bench", "subnets": ["10.88.0.0/22"]})
    names = [f"b{i:03d}" for i in range(count)]
    for n in names:
        client.request("POST", "/api/containers", {"name": n, "command": ["sleep", "3600"]})
    attach, detach = [], []
    for n in names:
        t0 = time.perf_counter()
        client.request("POST", "/api/networks/bench/connect", {"container": n})
        attach.append(time.perf_counter() - t0)
    for n in names:
        t0 = time.perf_counter()
        client.request("POST", "/api/networks/bench/disconnect", {"container": n})
        detach.append(time.perf_counter() - t0)
    for n in names:
        client.request("DELETE", f"/api/containers/{n}", params={"force": "1"})
    client.request("DELETE", "/api/networks/bench")
    return attach, detach


def bench_cni(work: Path, count: int) -> tuple[list[float], list[float]]:
    conf = json.dumps({
        "cniVersion": "1.0.0", "name": "cvbench", "type": "bridge", "bridge": "cvcni0",
        "isGateway": True, "ipMasq": False, "mtu": 1500,
        "ipam": {"type": "host-local", "subnet": "10.87.0.0/22", "dataDir": str(work / "cni"),
                 "routes": [{"dst": "0.0.0.0/0"}]},
    })  # fmt: skip
    names = [f"cvn{secrets.token_hex(4)}" for _ in range(count)]
    for n in names:
        ip("netns", "add", n)

    def call(cmd: str, n: str) -> float:
        env = {
            "CNI_COMMAND": cmd,
            "CNI_CONTAINERID": n,
            "CNI_NETNS": f"/run/netns/{n}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(CNI_BIN),
            "PATH": os.environ["PATH"],
        }
        t0 = time.perf_counter()
        res = subprocess.run([str(CNI_BIN / "bridge")], input=conf.encode(), env=env,
                             capture_output=True)  # fmt: skip
        spent = time.perf_counter() - t0
        if res.returncode != 0:
            raise SystemExit(f"CNI {cmd} failed: {res.stdout.decode()} {res.stderr.decode()}")
        return spent

    try:
        attach = [call("ADD", n) for n in names]
        detach = [call("DEL", n) for n in names]
    finally:
        for n in names:
            ip("netns", "del", n, check=False)
        ip("link", "del", "cvcni0", check=False)
    return attach, detach


def memory(client: AgentClient, agent_pid: int, state: Path, count: int) -> dict[str, float]:
    client.request("POST", "/api/networks", {"name": "mem", "subnets": ["10.86.0.0/22"]})
    sup_pid = int((state / "run" / "supervisor.pid").read_text())
    before = {"agent": rss_kb(agent_pid), "supervisor": rss_kb(sup_pid)}
    for i in range(count):
        client.request(
            "POST", "/api/containers",
            {"name": f"m{i:03d}", "networks": ["mem"], "command": ["sleep", "3600"]},
        )  # fmt: skip
    listed = client.request("GET", "/api/containers")
    running = sum(1 for c in listed if c["state"]["status"] == "running")
    after = {"agent": rss_kb(agent_pid), "supervisor": rss_kb(sup_pid)}
    return {
        "containers": running,
        "agent_kb_before": before["agent"],
        "agent_kb": after["agent"],
        "supervisor_kb_before": before["supervisor"],
        "supervisor_kb": after["supervisor"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--memory", type=int, default=500, help="containers for the memory run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (namespaces, bridges)")
    if not (CNI_BIN / "bridge").exists():
        raise SystemExit("containernetworking-plugins are not installed (/usr/lib/cni)")
    work = Path(tempfile.mkdtemp(prefix="cove-bench-attach-"))
    with host_namespace() as ns:
        print(f"host namespace {ns}, work dir {work}")
        proc, client = start_agent(work)
        try:
            cni_a, cni_d = bench_cni(work, args.count)
            cove_a, cove_d = bench_cove(client, args.count)
            mem = memory(client, proc.pid, work / "state", args.memory) if args.memory else {}
        finally:
            proc.terminate()
            proc.wait(30)
            teardown(work / "state" / "run")
    print(f"\n{args.count} namespaces, one network; milliseconds")
    print(f"{'':8}{'cove p50':>10}{'cove p95':>10}{'CNI p50':>10}{'CNI p95':>10}{'p50 ratio':>11}")
    for label, c, n in (("attach", cove_a, cni_a), ("detach", cove_d, cni_d)):
        ratio = statistics.median(c) / statistics.median(n)
        print(f"{label:8}{pct(c, .5):10.2f}{pct(c, .95):10.2f}{pct(n, .5):10.2f}"
              f"{pct(n, .95):10.2f}{ratio:11.2f}")  # fmt: skip
    if mem:
        n = mem["containers"]
        per = (mem["supervisor_kb"] - mem["supervisor_kb_before"]) / max(n, 1)
        print(f"\nmemory with {n} containers running (RSS):")
        agent_mb, idle_mb = mem["agent_kb"] / 1024, mem["agent_kb_before"] / 1024
        sup_mb, sup_idle = mem["supervisor_kb"] / 1024, mem["supervisor_kb_before"] / 1024
        print(f"  agent       {agent_mb:8.1f} MB (idle {idle_mb:.1f} MB)")
        print(
            f"  supervisor  {sup_mb:8.1f} MB (idle {sup_idle:.1f} MB), {per:.1f} kB per container"
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
