"""Container output through the log: cove side by side with podman (conmon,
its k8s-file log driver), same busybox image, no network, in one run,
inside a host namespace this script creates and removes.

write: a detached container prints LINES lines of 64 bytes and exits: its
       run time (started to finished, as inspect reports them), which the
       copier (conmon, or cove's supervisor) holds back while it reads and
       logs the output, stamping each line with a time.
read:  all of that container's log, and ``-t --tail 100``: cove through its
       API (the CLI's own start, about half a second of Python imports on a
       loaded machine, is not the log's cost), podman through its CLI (a Go
       binary; its start is in its figure).

    .venv/bin/python bench/run/logs.py [--lines 200000] [--runs 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from cove.agent.teardown import teardown

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "bench" / "run"))
sys.path.insert(0, str(ROOT / "tests"))
from hostns import host_namespace  # noqa: E402
from imageutil import Img, busybox_layer, docker_archive  # noqa: E402
from run import COVE, check, start_agent  # noqa: E402

IMAGE = "localhost/benchlogs:latest"


def out(argv: list[str], env: dict[str, str] | None = None) -> str:
    res = subprocess.run(argv, capture_output=True, env=env, timeout=300)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])}... failed: {res.stderr.decode()[-800:]}")
    return res.stdout.decode()


def to_null(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Seconds ``argv`` takes with its output thrown away."""
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                   check=True, timeout=300)  # fmt: skip
    return time.perf_counter() - t0


def ran_for(inspect: list[str], env: dict[str, str] | None) -> float:
    """Seconds from the container's start to its end, once it has ended."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        state = json.loads(out(inspect, env))
        state = state[0] if isinstance(state, list) else state
        state = state.get("state") or state.get("State")
        status = state.get("status") or state.get("Status")
        if status == "exited":
            start = state.get("started_at") or state.get("StartedAt")
            end = state.get("finished_at") or state.get("FinishedAt")
            return (_when(end) - _when(start)).total_seconds()
        time.sleep(0.2)
    raise SystemExit("the container did not exit in 300 s")


def _when(text: str) -> datetime:
    # podman: 2026-12-06 06:30:01.123456789 +0000 UTC; cove: RFC 3339
    text = text.replace(" +0000 UTC", "+00:00").replace("Z", "+00:00").replace(" ", "T")
    head, _, frac = text.partition(".")
    if frac:
        digits = frac.split("+")[0]
        text = f"{head}.{digits[:6]}+00:00"
    return datetime.fromisoformat(text)


def api_read(sock: Path, path: str) -> float:
    conn = UnixConnection(str(sock))
    t0 = time.perf_counter()
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        while resp.read1(65536):
            pass
        assert resp.status == 200, resp.status
    finally:
        conn.close()
    return time.perf_counter() - t0


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=300)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    lines = max(1000, min(args.lines, 2_000_000))
    runs = max(1, min(args.runs, 10))
    if os.geteuid() != 0:
        raise SystemExit("needs root (namespaces, mounts)")
    if shutil.which("podman") is None:
        raise SystemExit("podman is not installed (apt-get install podman)")
    work = Path(tempfile.mkdtemp(prefix="cove-bench-logs-", dir="/var/tmp"))
    archive = work / "bb.tar"
    docker_archive(archive, Img([busybox_layer()], cmd=["sh"]), IMAGE)
    podman = ["podman", "--root", str(work / "podman"), "--runroot", str(work / "podman-run"),
              "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs",
              "--events-backend", "none"]  # fmt: skip
    limits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
              "--runtime", "runc", "--network", "none", "--log-driver", "k8s-file"]  # fmt: skip
    script = f"yes '{'x' * 63}' | head -n {lines}"
    res: dict[str, list[float]] = {k: [] for k in ("cw", "cr", "ct", "pw", "pr", "pt")}
    with host_namespace() as ns:
        print(f"host namespace {ns}, work dir {work}; {lines} lines of 64 bytes a run")
        proc, env = start_agent(work)
        sock = work / "agent.sock"
        try:
            check([*COVE, "image", "load", "-q", "-i", str(archive)], env)
            check([*podman, "load", "-q", "-i", str(archive)])
            for i in range(runs):
                name = f"logs{i}"
                check([*COVE, "run", "-d", "--name", name, IMAGE, "sh", "-c", script], env)
                res["cw"].append(ran_for([*COVE, "inspect", name], env))
                logs = f"/api/containers/{name}/logs?multiplex=1"
                res["cr"].append(api_read(sock, logs))
                res["ct"].append(api_read(sock, logs + "&timestamps=1&tail=100"))
                check([*COVE, "rm", name], env)

                check([*podman, "run", "-d", "--name", name, *limits, IMAGE, "sh", "-c", script])
                res["pw"].append(ran_for([*podman, "inspect", name], None))
                res["pr"].append(to_null([*podman, "logs", name]))
                res["pt"].append(to_null([*podman, "logs", "-t", "--tail", "100", name]))
                check([*podman, "rm", name])
            got = out([*COVE, "image", "ls"], env)  # still answering after the runs
            assert "benchlogs" in got
        finally:
            proc.terminate()
            proc.wait(30)
            teardown(work / "state" / "run")
            subprocess.run([*podman, "system", "reset", "-f"], capture_output=True, timeout=120)
    print(f"\nmilliseconds, median of {runs} runs")
    print(f"{'':22}{'cove':>10}{'podman':>10}{'ratio':>8}")
    for label, c, p in (("write (start to exit)", "cw", "pw"), ("logs (all)", "cr", "pr"),
                        ("logs -t --tail 100", "ct", "pt")):  # fmt: skip
        cm, pm = statistics.median(res[c]) * 1000, statistics.median(res[p]) * 1000
        print(f"{label:22}{cm:10.0f}{pm:10.0f}{cm / pm:8.2f}")
    mb = lines * 64 / 1e6
    cw = statistics.median(res["cw"])
    print(f"cove wrote {mb:.1f} MB of output at {mb / cw:.1f} MB/s, {lines / cw:,.0f} lines/s")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
