"""Memory per container beyond its own processes: the agent's and the
supervisor's resident memory (RSS, from /proc/PID/status) before and after
N ``cove run -d --network NET -- sleep 600`` containers, per container,
inside a host namespace this script creates and removes. The containers'
own processes (``sleep``) are not counted: cove keeps no process per
container (the supervisor reaps them all), where podman keeps a conmon.

    .venv/bin/python bench/run/memory.py [--containers 50]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cove.agent.teardown import teardown

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "bench" / "run"))
from hostns import host_namespace  # noqa: E402
from run import COVE, check, start_agent  # noqa: E402

GOAL_KB = 2048  # the bound: under 2 MB a container


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


def settled(pids: list[int]) -> list[int]:
    """RSS once the processes are idle (two reads a second apart agree
    within 64 kB, at most 10 s)."""
    last = [rss_kb(p) for p in pids]
    for _ in range(10):
        time.sleep(1.0)
        now = [rss_kb(p) for p in pids]
        if all(abs(a - b) <= 64 for a, b in zip(now, last, strict=True)):
            return now
        last = now
    return last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=50)
    args = parser.parse_args()
    n = max(1, min(args.containers, 200))
    if os.geteuid() != 0:
        raise SystemExit("needs root (namespaces, mounts)")
    work = Path(tempfile.mkdtemp(prefix="cove-bench-mem-", dir="/var/tmp"))
    try:
        with host_namespace() as ns:
            print(f"host namespace {ns}, work dir {work}")
            proc, env = start_agent(work)
            try:
                check([*COVE, "network", "create", "benchmem", "--subnet", "10.93.0.0/22"], env)
                # one container first: what is paid once (imports, first
                # network's bridge) is not a per-container cost
                check([*COVE, "run", "-d", "--name", "m0", "--network", "benchmem", "--",
                       "sleep", "600"], env)  # fmt: skip
                sup = int((work / "state" / "run" / "supervisor.pid").read_text())
                pids = [proc.pid, sup]
                before = settled(pids)
                t0 = time.monotonic()
                for i in range(1, n + 1):
                    check([*COVE, "run", "-d", "--name", f"m{i}", "--network", "benchmem",
                           "--", "sleep", "600"], env)  # fmt: skip
                took = time.monotonic() - t0
                after = settled(pids)
                running = len(check_out([*COVE, "ps", "-q"], env).split())
            finally:
                proc.terminate()
                proc.wait(30)
                teardown(work / "state" / "run")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    agent_kb, sup_kb = (a - b for a, b in zip(after, before, strict=True))
    per = (agent_kb + sup_kb) / n
    print(f"\n{n} containers (sleep 600, one network), {running} running, started in {took:.1f} s")
    print(f"{'':12}{'before kB':>12}{'after kB':>12}{'growth kB':>12}{'per ctr kB':>12}")
    for label, b, a in (("agent", before[0], after[0]), ("supervisor", before[1], after[1])):
        print(f"{label:12}{b:12}{a:12}{a - b:12}{(a - b) / n:12.1f}")
    verdict = "under" if per < GOAL_KB else "OVER"
    print(f"{'both':12}{'':12}{'':12}{agent_kb + sup_kb:12}{per:12.1f}  ({verdict} the 2 MB goal)")
    return 0


def check_out(argv: list[str], env: dict[str, str]) -> str:
    res = subprocess.run(argv, capture_output=True, env=env, timeout=120, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])}... failed: {res.stderr[-800:]}")
    return res.stdout


if __name__ == "__main__":
    sys.exit(main())
