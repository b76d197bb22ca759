"""The web UI at scale, in Debian's headless Chromium, against a real agent
in a host namespace this script creates and removes.

With C containers on one network and S registered services (each with a TTL
check), it measures:

- first render: from navigation to the view drawn, for the topology (every
  container in the picture) and the services view (every service listed);
- live update: a check failed through the HTTP API until the services view
  shows it critical, with no reload (median of a few);
- idle cost: the agent's CPU over a window with no UI open (with the CPU
  of the programs it ran meanwhile, such as nft, and of the containers'
  supervisor beside it), then with U
  pages open and idle (each in its own browser context, so each holds its
  own event stream, as separate users would); once on the empty agent (the
  UIs' own cost) and once with everything running (where the agent's own
  periodic work, and the machine's noise, are larger than the UIs' cost).

There is no peer run beside it: Consul's UI needs a Consul server, which this
machine does not have.

    .venv/bin/python bench/ui/run.py [--containers 100] [--services 1000] [--uis 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from cove.agent.teardown import teardown
from cove.cli.client import AgentClient
from cove.runtime.client import SupervisorClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hostns import host_namespace, start_agent

HTTP = "127.0.0.1:18510"


def put(path: str, body: object = None) -> None:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{HTTP}{path}", data=data, method="PUT")
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share(pid: int, seconds: float) -> float:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds * 100


def children_seconds(pid: int) -> float:
    """CPU of the programs ``pid`` ran and waited for (nft, ip)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def idle_shares(pid: int, supervisor: int, seconds: float) -> dict[str, float]:
    """The agent's own CPU, its child programs' and the container
    supervisor's, over one window, in % of a core."""
    counters = (lambda: cpu_seconds(pid), lambda: children_seconds(pid))
    counters += (lambda: cpu_seconds(supervisor),)
    before = [c() for c in counters]
    time.sleep(seconds)
    after = [c() for c in counters]
    names = ("agent_cpu_idle_no_ui_pct", "agent_programs_cpu_idle_pct", "supervisor_cpu_idle_pct")
    return {n: (a - b) / seconds * 100 for n, a, b in zip(names, after, before, strict=True)}


def populate(client: AgentClient, containers: int, services: int) -> float:
    t0 = time.monotonic()
    client.request("POST", "/api/networks", {"name": "uibench", "subnets": ["10.98.0.0/16"]})
    for i in range(containers):
        client.request(
            "POST",
            "/api/containers",
            {"name": f"c{i}", "command": ["sleep", "3600"], "networks": ["uibench"]},
        )
    for i in range(services):
        put(
            "/v1/agent/service/register",
            {
                "Name": f"svc{i}",
                "ID": f"svc{i}-1",
                "Port": 8000 + i % 1000,
                "Tags": ["bench", f"shard{i % 10}"],
                "Check": {"CheckID": f"svc{i}-ttl", "TTL": "3600s"},
            },
        )
        put(f"/v1/agent/check/pass/svc{i}-ttl")
    return time.monotonic() - t0


def idle_cost(args: argparse.Namespace, pid: int) -> dict[str, float]:
    """The agent's CPU with no UI and with U idle UIs, before it has any
    containers or services: what the UIs themselves cost it, apart from the
    agent's own periodic work (which grows with what it runs)."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "chromium"
    out = {"quiet_agent_cpu_no_ui_pct": cpu_share(pid, args.window)}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            for _ in range(args.uis):
                page = browser.new_context().new_page()
                page.goto(f"http://{HTTP}/ui/#/services")
                page.wait_for_selector("text=Live: connected to the agent")
            time.sleep(2)
            out[f"quiet_agent_cpu_{args.uis}_uis_pct"] = cpu_share(pid, args.window)
        finally:
            browser.close()
    return out


def measure(args: argparse.Namespace, pid: int, supervisor: int) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Debian's chromium is needed: apt-get install chromium")
    out: dict[str, float] = {}
    base = f"http://{HTTP}/ui/"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            t0 = time.monotonic()
            page.goto(base + "#/topology")
            page.wait_for_selector(f'svg [data-container="c{args.containers - 1}"]', timeout=60000)
            out["topology_first_render_ms"] = (time.monotonic() - t0) * 1000
            t0 = time.monotonic()
            page.goto(base + "#/services/svc0")
            page.reload()
            page.wait_for_selector(f'#service-list li[data-service="svc{args.services - 1}"]')
            page.wait_for_selector('[data-check="svc0-ttl"]')
            out["services_first_render_ms"] = (time.monotonic() - t0) * 1000
            page.wait_for_selector("text=Live: connected to the agent")
            lags = []
            for i in range(5):
                t0 = time.monotonic()
                state = "critical" if i % 2 == 0 else "passing"
                put(f"/v1/agent/check/{'fail' if state == 'critical' else 'pass'}/svc0-ttl")
                page.wait_for_selector(f'[data-check="svc0-ttl"][data-status="{state}"]')
                lags.append((time.monotonic() - t0) * 1000)
            out["live_update_median_ms"] = statistics.median(lags)
            out["live_update_max_ms"] = max(lags)
            page.close()
            # Idle means after the passes that follow the last change (the
            # reconcilers' next tick reads what the population changed).
            time.sleep(args.settle)
            out |= idle_shares(pid, supervisor, args.window)
            pages = []
            for _ in range(args.uis):
                ctx = browser.new_context()
                p = ctx.new_page()
                p.goto(base + "#/services")
                p.wait_for_selector("text=Live: connected to the agent")
                pages.append(p)
            time.sleep(2)  # the first renders are over
            out[f"agent_cpu_idle_{args.uis}_uis_pct"] = cpu_share(pid, args.window)
        finally:
            browser.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--containers", type=int, default=100)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--uis", type=int, default=10)
    ap.add_argument("--window", type=float, default=20.0, help="seconds per CPU measurement")
    ap.add_argument(
        "--settle", type=float, default=20.0,
        help="seconds between the last change and the idle measurements (0: none)",
    )  # fmt: skip
    args = ap.parse_args()
    if not (1 <= args.containers <= 500 and 1 <= args.services <= 2000 and 1 <= args.uis <= 20):
        raise SystemExit("bounded: containers 1-500, services 1-2000, uis 1-20")
    with tempfile.TemporaryDirectory(prefix="cove-uibench-") as tmp, host_namespace():
        work = Path(tmp)
        proc, client = start_agent(work, HTTP, "127.0.0.1:18610")
        try:
            quiet = idle_cost(args, proc.pid)
            took = populate(client, args.containers, args.services)
            print(f"populated {args.containers} containers + {args.services} services: {took:.1f}s")
            supervisor = SupervisorClient(work / "state" / "run").ensure_running()
            results = quiet | measure(args, proc.pid, supervisor)
        finally:
            with contextlib.suppress(Exception):
                for i in range(args.containers):
                    client.request("DELETE", f"/api/containers/c{i}?force=1")
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            if proc.poll() is None:
                proc.kill()
            teardown(work / "state" / "run")
    print(f"{'measure':36} value")
    for name, value in results.items():
        print(f"{name:36} {value:8.1f}")
    for prefix, what in (("quiet_agent_cpu", "an empty agent"), ("agent_cpu_idle", "the full one")):
        added = results[f"{prefix}_{args.uis}_uis_pct"] - results[f"{prefix}_no_ui_pct"]
        print(f"agent CPU added by {args.uis} idle UIs, {what}: {added:.2f}% of a core (goal < 1%)")


if __name__ == "__main__":
    main()
