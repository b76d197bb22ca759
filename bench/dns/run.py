"""Benchmark: cove's DNS against dnsmasq, same names, same run.

    .venv/bin/python bench/dns/run.py [--rounds 3] [--seconds 5] [--names 1000]

Both servers serve the same 1,000 names (``hostN.bench.cove``) on loopback
ports, each pinned to core 0 with taskset; dnsperf runs pinned to core 1.
The query file holds every name once plus about 5% unknown names (NXDOMAIN
from both: dnsmasq is authoritative for the domain with ``--local``). Per
round and server, in alternation (so background load hits both alike):

- max QPS: dnsperf with 200 queries outstanding for ``--seconds``, and the
  queries answered per CPU second the server used (from /proc), which
  other load on the machine disturbs far less than the QPS;
- latency: dnsperf at a fixed 2,000 qps (-Q 2000) with per-query output,
  from which p50 and p99 are taken.

The best QPS and queries per CPU second, the median percentiles over the
rounds are reported, with the ratios cove/dnsmasq, and each max-QPS line
shows the share of core 0 the server used: well under 100% means the server
was not the bottleneck (dnsperf was, or other load on the machine). Traffic
goes to 127.0.0.1 only; neither server has an upstream.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ADDR = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind((ADDR, 0))
        port: int = u.getsockname()[1]
    return port


def _wait_answering(port: int, deadline: float) -> None:
    # A hand-made query for host0.bench.cove: any answer means it is up.
    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    q += b"\x05host0\x05bench\x04cove\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            s.sendto(q, (ADDR, port))
            try:
                if s.recv(512)[:2] == q[:2]:
                    return
            except OSError:
                continue
    raise SystemExit(f"server on port {port} never answered")


def _dnsperf(port: int, qfile: Path, *extra: str) -> str:
    cmd = ["taskset", "-c", "1", "dnsperf", "-s", ADDR, "-p", str(port), "-d", str(qfile)]
    out = subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _max_qps(port: int, pid: int, qfile: Path, seconds: int) -> tuple[float, float, float, float]:
    """Max QPS, % lost, queries answered per CPU second of the server
    (which background load on the machine disturbs far less than QPS) and
    the server's CPU use over the run in % of a core."""
    cpu = _cpu_seconds(pid)
    start = time.monotonic()
    text = _dnsperf(port, qfile, "-l", str(seconds), "-q", "200")
    wall = time.monotonic() - start
    cpu = _cpu_seconds(pid) - cpu
    qps = lost = done = 0.0
    for line in text.splitlines():
        if "Queries per second:" in line:
            qps = float(line.split()[-1])
        if "Queries lost:" in line:
            lost = float(line.split("(")[1].rstrip("%)"))
        if "Queries completed:" in line:
            done = float(line.split()[2])
    return qps, lost, done / cpu if cpu > 0 else 0.0, 100 * cpu / wall


def _latency(port: int, qfile: Path, seconds: int) -> tuple[float, float]:
    text = _dnsperf(port, qfile, "-l", str(seconds), "-Q", "2000", "-v")
    lat = sorted(float(line.split()[-1]) for line in text.splitlines() if line.startswith("> "))
    if not lat:
        raise SystemExit("dnsperf reported no latencies")
    return lat[len(lat) // 2] * 1e3, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--names", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    for tool in ("dnsperf", "dnsmasq", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two cores (servers on core 0, dnsperf on core 1)")

    work = Path(tempfile.mkdtemp(prefix="cove-bench-dns-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        base = ipaddress.IPv4Address("10.200.1.0")
        hosts = [f"{base + i} host{i}.bench.cove" for i in range(args.names)]
        (work / "hosts").write_text("\n".join(hosts) + "\n")
        names = [f"host{i}.bench.cove A" for i in range(args.names)]
        names += [f"nohost{i}.bench.cove A" for i in range(max(1, args.names // 20))]
        random.Random(1).shuffle(names)
        qfile = work / "queries"
        qfile.write_text("\n".join(names) + "\n")

        cove_port, dm_port = _free_port(), _free_port()
        runner = [sys.executable, str(HERE / "cove_server.py"), "--port", str(cove_port)]
        cove = subprocess.Popen(
            ["taskset", "-c", "0", *runner, "--names", str(args.names)],
            stdout=subprocess.DEVNULL,
        )
        procs.append(cove)
        dnsmasq = subprocess.Popen(
            [
                "taskset", "-c", "0", "dnsmasq", "--keep-in-foreground", "--no-resolv",
                "--no-hosts", f"--addn-hosts={work / 'hosts'}", f"--listen-address={ADDR}",
                "--bind-interfaces", f"--port={dm_port}", "--local=/bench.cove/",
                "--cache-size=10000", "--user=root", f"--pid-file={work / 'dnsmasq.pid'}",
            ],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(dnsmasq)
        deadline = time.monotonic() + 60
        _wait_answering(cove_port, deadline)
        _wait_answering(dm_port, deadline)

        servers = {"cove": cove_port, "dnsmasq": dm_port}
        pids = {"cove": cove.pid, "dnsmasq": dnsmasq.pid}  # taskset execs: same pid
        qps: dict[str, list[float]] = {k: [] for k in servers}
        per_cpu: dict[str, list[float]] = {k: [] for k in servers}
        p50: dict[str, list[float]] = {k: [] for k in servers}
        p99: dict[str, list[float]] = {k: [] for k in servers}
        for port in servers.values():
            _dnsperf(port, qfile, "-l", "1", "-q", "50")  # warm both caches
        for r in range(args.rounds):
            for name, port in servers.items():
                q, lost, eff, busy = _max_qps(port, pids[name], qfile, args.seconds)
                a, b = _latency(port, qfile, max(2, args.seconds // 2))
                qps[name].append(q)
                per_cpu[name].append(eff)
                p50[name].append(a)
                p99[name].append(b)
                print(
                    f"round {r + 1} {name:8} max {q:8.0f} qps (lost {lost:.2f}%,"
                    f" {eff:8.0f} per CPU s, CPU {busy:3.0f}%)"
                    f"  @2000qps p50 {a:.3f} ms p99 {b:.3f} ms",
                    flush=True,
                )
        print()
        print(
            f"{'server':10}{'max qps':>12}{'q/CPU s':>12}{'p50 ms':>10}{'p99 ms':>10}"
            "   (latency at 2000 qps)"
        )
        best = {k: max(v) for k, v in qps.items()}
        eff = {k: max(v) for k, v in per_cpu.items()}
        m50 = {k: statistics.median(v) for k, v in p50.items()}
        m99 = {k: statistics.median(v) for k, v in p99.items()}
        for name in servers:
            print(f"{name:10}{best[name]:12.0f}{eff[name]:12.0f}{m50[name]:10.3f}{m99[name]:10.3f}")
        print(
            f"{'ratio':10}{best['cove'] / best['dnsmasq']:12.2f}"
            f"{eff['cove'] / eff['dnsmasq']:12.2f}"
            f"{m50['cove'] / m50['dnsmasq']:10.2f}{m99['cove'] / m99['dnsmasq']:10.2f}"
            "   (cove / dnsmasq; qps: higher is better, latency: lower)"
        )
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
