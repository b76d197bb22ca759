"""Benchmark: the longest gap in DNS answers a container sees while the agent
is stopped (SIGTERM) and started again, and killed (-9) and started again.

    .venv/bin/python bench/dns/restart_gap.py [--restarts 20] [--kills 20] [--down 1.0]

Runs as root. A fresh network namespace plays the host; in it a real agent
(its own state directory), one network and two containers: ``target`` and
``resolver``. The resolver keeps one query for ``target`` outstanding at all
times against its nameserver (the network's gateway, port 53): send, wait
for the answer (resend after 1 s: a query unanswered; or at once when the
port is closed: refused), pause 5 ms, again.
It notes every answer that came more than 20 ms after the one before, and
every answer that is not the target's address, in its log (`cove logs`).

First the resolver runs ``--control`` seconds against an agent left alone:
the longest gap there is what the machine's own load costs. Then the agent
is stopped ``--restarts`` times with SIGTERM and killed
``--kills`` times with SIGKILL; each time it stays down ``--down`` seconds,
is started again and left to settle for a second. Per kind of stop, the
longest gap between two answers from the moment of the stop until a second
after the agent answers the CLI again is reported (max and median over the
cycles), with the queries unanswered and the wrong answers, and the five
longest gaps placed in time around their stop (before it: the agent was
slow; after it plus ``--down``: the new agent's start-up). Traffic stays
inside the namespaces this script creates; everything is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
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
from hostns import host_namespace

COVE = [sys.executable, "-m", "cove.cli.main"]

RESOLVER = """\
import os, random, socket, struct, sys, time
stopfile, want = sys.argv[1], sys.argv[2]
server = next(l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver"))
qname = b"".join(bytes([len(p)]) + p.encode() for p in "target".split(".")) + b"\\0"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
last = time.time()
answers = unanswered = wrong = refused = 0
# Notes go to stdout, the container's log (the host's files are read-only
# in a container).
print("start", flush=True)
while not os.path.exists(stopfile):
    qid = random.randrange(65536)
    s.sendto(struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + b"\\0\\1\\0\\1",
             (server, 53))
    while True:
        try:
            data = s.recv(4096)
        except socket.timeout:
            unanswered += 1
            break
        except OSError:  # refused: nothing listens (cove before DNS outlived the agent)
            refused += 1
            break
        if data[:2] != struct.pack("!H", qid):
            continue  # a late answer to an earlier query
        now = time.time()
        rcode = data[3] & 0xF
        addr = socket.inet_ntoa(data[-4:]) if rcode == 0 and len(data) >= 4 else ""
        if addr != want:
            wrong += 1
            print("wrong", now, f"rcode={rcode}", flush=True)
        if now - last > 0.02:
            print("gap", now, now - last, flush=True)
        last = now
        answers += 1
        break
    time.sleep(0.005)
print("done", answers, unanswered, wrong, refused, flush=True)
"""


class Agent:
    def __init__(self, work: Path) -> None:
        self.work = work
        # A directory of its own: the agent hides its socket's directory from
        # containers, and the resolver's script lives in ``work``.
        self.socket = work / "sock" / "agent.sock"
        self.env = {**os.environ, "COVE_SOCKET": str(self.socket)}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.work / "agent.log", "ab")  # noqa: SIM115 - lives as long as the agent
        self.proc = subprocess.Popen(
            [*COVE, "agent", "--state-dir", str(self.work / "state"),
             "--socket", str(self.socket), "--http", "127.0.0.1:18500",
             "--dns", "127.0.0.1:18600", "--upstream", "127.0.0.1:5399", "--log-level", "info"],
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        log.close()
        # Asked over the socket from this process: a CLI process per poll
        # would load the machine while the agent starts, and stall the very
        # answers measured.
        client = AgentClient(self.socket, timeout=5)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(Exception):
                client.request("GET", "/api/health")
                return
            time.sleep(0.05)
        raise SystemExit("the agent did not start: " + self.log_tail())

    def log_tail(self) -> str:
        return (self.work / "agent.log").read_text(errors="replace")[-3000:]

    def stop(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*COVE, *args], env=self.env, capture_output=True, text=True)

    def ok(self, *args: str) -> str:
        res = self.cli(*args)
        if res.returncode != 0:
            raise SystemExit(f"cove {' '.join(args)}: {res.stderr}")
        return res.stdout


def run(work: Path, restarts: int, kills: int, down: float, control: float) -> None:
    agent = Agent(work)
    agent.start()
    try:
        agent.ok("network", "create", "gapnet", "--subnet", "10.87.0.0/24")
        agent.ok("run", "-d", "--name", "target", "--network", "gapnet", "--ip", "10.87.0.10",
                 "--", "sleep", "3600")  # fmt: skip
        script, stopfile = work / "resolver.py", work / "stop"
        script.write_text(RESOLVER)
        agent.ok("run", "-d", "--name", "resolver", "--network", "gapnet", "--", "python3",
                 "-S", "-u", str(script), str(stopfile), "10.87.0.10")  # fmt: skip
        deadline = time.monotonic() + 20
        while "start" not in agent.ok("logs", "resolver") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # a steady state first
        windows: list[tuple[str, float, float]] = []
        if control > 0:
            # The same resolver against an agent left alone: what the
            # machine's own load costs, for comparison.
            t0 = time.time()
            time.sleep(control)
            windows.append(("control", t0, time.time() - 1.0))
        plan = ["SIGTERM"] * restarts + ["SIGKILL"] * kills
        for i, kind in enumerate(plan):
            t0 = time.time()
            agent.stop(signal.SIGTERM if kind == "SIGTERM" else signal.SIGKILL)
            time.sleep(down)
            agent.start()
            time.sleep(1.0)
            windows.append((kind, t0, time.time()))
            print(f"\r{i + 1}/{len(plan)} stops", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        stopfile.write_text("")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "done" not in agent.ok("logs", "resolver"):
            time.sleep(0.1)
        text = agent.ok("logs", "resolver")
        (work / "resolver.out").write_text(text)
        if "done" not in text:
            raise SystemExit("the resolver did not finish: " + text[-2000:])
        report(text, windows, down)
        sup = int((work / "state" / "run" / "supervisor.pid").read_text())
        rss = next(
            line.split()[1]
            for line in Path(f"/proc/{sup}/status").read_text().splitlines()
            if line.startswith("VmRSS")
        )
        print(f"supervisor RSS at the end: {int(rss) / 1024:.1f} MB")
    finally:
        agent.stop(signal.SIGTERM)
        teardown(work / "state" / "run")


def report(text: str, windows: list[tuple[str, float, float]], down: float) -> None:
    gaps: list[tuple[float, float]] = []
    totals = "?"
    for line in text.splitlines():
        w = line.split()
        if w[0] == "gap":
            gaps.append((float(w[1]), float(w[2])))
        elif w[0] == "done":
            totals = (
                f"{w[1]} answers, {w[2]} queries unanswered (1 s), {w[3]} wrong answers, "
                f"{w[4]} refused (port closed)"
            )
    print(f"resolver: {totals}; the agent down {down:.1f} s per stop")
    for kind in ("control", "SIGTERM", "SIGKILL"):
        per = []
        for k, t0, t1 in windows:
            if k == kind:
                # a gap is noted at the answer that ends it
                per.append(max((g for t, g in gaps if t0 <= t <= t1 + 1.0), default=0.0))
        if not per:
            continue
        if kind == "control":
            print(f"control, no stop: longest gap {per[0] * 1000:7.1f} ms")
            continue
        print(
            f"{kind:7s} x{len(per)}: longest gap {max(per) * 1000:7.1f} ms, "
            f"median of per-stop longest {statistics.median(per) * 1000:6.1f} ms, "
            f"stops with a gap over 100 ms: {sum(1 for g in per if g > 0.1)}"
        )
    worst = sorted(
        (
            (g, t, k, t0)
            for t, g in gaps
            for k, t0, t1 in windows
            if t0 <= t <= t1 + 1.0 and k != "control"
        ),
        reverse=True,
    )[:5]
    for g, t, k, t0 in worst:
        # where the gap lies around the stop tells an agent slow before it
        # died from a slow takeover
        print(
            f"  {k}: {g * 1000:6.1f} ms, from {(t - g - t0) * 1000:+7.1f} ms "
            f"to {(t - t0) * 1000:+7.1f} ms around the stop"
        )
    outside = [g for t, g in gaps if not any(t0 <= t <= t1 + 1.0 for _, t0, t1 in windows)]
    print(f"longest gap outside the stops: {max(outside, default=0.0) * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--restarts", type=int, default=20)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--down", type=float, default=1.0, help="seconds with no agent per stop")
    parser.add_argument(
        "--control", type=float, default=20.0, help="seconds measured first with no stop"
    )
    parser.add_argument("--keep", help="a directory for the logs, kept afterwards")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (namespaces, bridges, containers)")
    # not under /tmp, which a container without an image has of its own
    with tempfile.TemporaryDirectory(prefix="cove-gap-", dir="/var/lib") as tmp, host_namespace():
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        run(work, args.restarts, args.kills, args.down, args.control)


if __name__ == "__main__":
    main()
