"""bench/networks: create and remove 100 networks through the CLI and the
API, and time a restarted agent's reconcile of 100 existing networks.

The peer is the kernel itself: the same bridges, addresses and nft rules made
directly with `ip` and `nft` commands, one process per step, as a shell
script would (the floor any tool built on them can reach). Everything runs in
a network namespace the benchmark creates and removes.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import nsutil
from agentproc import AgentProc

N = 100


def timed(fn: Callable[[int], object], n: int = N) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    return out


def ms(samples: list[float]) -> str:
    p50 = statistics.median(samples) * 1e3
    return f"p50 {p50:7.2f} ms  mean {statistics.mean(samples) * 1e3:7.2f} ms"


def sh(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True)


def kernel_create(i: int) -> None:
    br = f"cvb{i:05d}"
    sh("ip", "link", "add", br, "type", "bridge")
    sh("ip", "addr", "add", f"10.200.{i}.1/24", "dev", br)
    sh("ip", "link", "set", br, "up")
    sh("nft", "add", "rule", "inet", "cvbench", "post", "ip", "saddr", f"10.200.{i}.0/24",
       "oifname", "!=", br, "masquerade")  # fmt: skip


def kernel_rm(i: int) -> None:
    sh("ip", "link", "del", f"cvb{i:05d}")


def bridge_list() -> list[dict[str, str]]:
    proc = subprocess.run(
        ["ip", "-j", "link", "show", "type", "bridge"], capture_output=True, text=True, check=True
    )
    return list(json.loads(proc.stdout or "[]"))


def bridges() -> int:
    out = bridge_list()
    return sum(1 for b in out if b["ifname"].startswith("cv-"))


def main() -> int:
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, nsutil.namespace("cvbn") as ns, nsutil.entered(ns):
        sh("nft", "add", "table", "inet", "cvbench")
        sh("nft", "add", "chain", "inet", "cvbench", "post",
           "{ type nat hook postrouting priority 100; }")  # fmt: skip
        results["kernel create"] = timed(kernel_create)
        results["kernel rm"] = timed(kernel_rm)
        sh("nft", "delete", "table", "inet", "cvbench")

        agent = AgentProc(ns, Path(tmp))
        agent.start()
        try:
            results["cli create"] = timed(lambda i: agent.ok("network", "create", f"c{i}"))
            results["cli rm"] = timed(lambda i: agent.ok("network", "rm", f"c{i}"))

            def api_create(i: int) -> None:
                status, body = agent.api("POST", "/api/networks", {"name": f"a{i}"})
                assert status == 201, body

            def api_rm(i: int) -> None:
                status, body = agent.api("DELETE", f"/api/networks/a{i}")
                assert status == 200, body

            results["api create"] = timed(api_create)
            results["api rm"] = timed(api_rm)

            for i in range(N):
                api_create(i)
            restart: list[float] = []
            cold: list[float] = []
            for _ in range(3):
                agent.stop()
                t0 = time.perf_counter()
                agent.start()
                restart.append(time.perf_counter() - t0)
                # As after a reboot: the kernel lost every bridge and rule.
                agent.kill9()
                for b in bridge_list():
                    sh("ip", "link", "del", b["ifname"])
                sh("nft", "delete", "table", "inet", "cove")
                t0 = time.perf_counter()
                agent.start()
                while bridges() < N:
                    time.sleep(0.005)
                cold.append(time.perf_counter() - t0)
            results["restart, 100 networks in place"] = restart
            results["restart, rebuild 100 networks"] = cold
        finally:
            agent.cli("network", "prune", "-f")
            agent.stop()

    print(f"bench/networks: {N} networks, agent on SQLite in its own namespace")
    for key, samples in results.items():
        print(f"  {key:34s} {ms(samples)}")
    for op in ("create", "rm"):
        k = statistics.median(results[f"kernel {op}"])
        for via in ("cli", "api"):
            c = statistics.median(results[f"{via} {op}"])
            print(f"  ratio {via} {op} / bare kernel commands (p50): {c / k:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
