"""Starting a container from an image and loading an image: cove side by
side with podman, on the same busybox image and each on a bridge network of
its own, in one run, inside a host namespace this script creates and
removes.

run --rm:  ``cove run --rm --network N IMAGE true`` (one command: made,
           run, waited for, removed) against ``podman run --rm --network N
           IMAGE true``.
run -d:    ``cove run -d --network N IMAGE true`` then ``cove rm -f ID``,
           timed together, against podman's same two commands.
load:      ``cove image load -i A`` against ``podman load -i A`` of the same
           docker-archive (each followed by an untimed ``rmi``).

The two tools take turns run by run, so a busy machine slows both alike.
Beside the wall-clock times, the CPU time each tool's processes used per
command (cove: the CLI, the agent and the supervisor with the containers
it reaps; podman: podman and the children it reaps, so not its detached
conmon): on a machine shared with other work, wall time follows CPU time.
cove's modules are byte-compiled first, as an installed package is.
podman keeps its images, networks and state in a store of its own under
the work directory, so the host's podman storage is not touched.

    .venv/bin/python bench/run/run.py [--runs 20] [--loads 5]
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cove.agent.teardown import teardown

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))  # the image builder the tests use
from hostns import host_namespace  # noqa: E402
from imageutil import Img, busybox_layer, docker_archive  # noqa: E402

COVE = [sys.executable, "-m", "cove.cli.main"]
IMAGE = "localhost/benchbb:latest"


def process_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and of the children it has reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Meter:
    """Wall and CPU time of each sample; ``daemons`` are the pids whose CPU
    counts too (cove's agent and supervisor)."""

    def __init__(self, daemons: Callable[[], list[int]] = list) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._daemons = daemons

    def __call__(self, fn: Callable[[], object]) -> None:
        pids = self._daemons()
        c0 = children_cpu() + sum(process_cpu(p) for p in pids)
        t0 = time.perf_counter()
        fn()
        self.wall.append(time.perf_counter() - t0)
        self.cpu.append(children_cpu() + sum(process_cpu(p) for p in pids) - c0)


def check(argv: list[str], env: dict[str, str] | None = None) -> str:
    res = subprocess.run(argv, capture_output=True, env=env, timeout=120)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])}... failed: {res.stderr.decode()[-800:]}")
    return res.stdout.decode()


def start_agent(work: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    env = {**os.environ, "COVE_SOCKET": str(work / "agent.sock")}
    log = open(work / "agent.log", "ab")  # noqa: SIM115 - lives as long as the agent
    proc = subprocess.Popen(
        [*COVE, "agent", "--state-dir", str(work / "state"), "--socket", str(work / "agent.sock"),
         "--http", "127.0.0.1:18510", "--dns", "127.0.0.1:18610", "--upstream", "127.0.0.1:5399",
         "--log-level", "warning"],
        stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if subprocess.run([*COVE, "images", "-q"], env=env, capture_output=True).returncode == 0:
            return proc, env
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise SystemExit("the agent did not start: " + (work / "agent.log").read_text()[-2000:])


def stats(xs: list[float]) -> tuple[float, float]:
    """Median and p95, in milliseconds."""
    return statistics.median(xs) * 1000, sorted(xs)[int(0.95 * (len(xs) - 1))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args()
    runs, loads = max(1, min(args.runs, 200)), max(0, min(args.loads, 50))
    if os.geteuid() != 0:
        raise SystemExit("needs root (namespaces, mounts)")
    if shutil.which("podman") is None:
        raise SystemExit("podman is not installed (apt-get install podman)")
    compileall.compile_dir(str(ROOT / "src" / "cove"), quiet=1)
    work = Path(tempfile.mkdtemp(prefix="cove-bench-run-", dir="/var/tmp"))
    archive = work / "bb.tar"
    docker_archive(archive, Img([busybox_layer()], cmd=["sh"]), IMAGE)
    podman = ["podman", "--root", str(work / "podman"), "--runroot", str(work / "podman-run"),
              "--network-config-dir", str(work / "podman-net"),
              "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs",
              "--events-backend", "none"]  # fmt: skip
    # podman's default limits (nofile, nproc) are raised with setrlimit, which
    # this host may forbid: set to what the agent has, as cove leaves them
    limits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
              "--runtime", "runc"]  # fmt: skip
    results: dict[str, tuple[Meter, Meter]] = {}
    pod_error = ""
    try:
        with host_namespace() as ns:
            print(f"host namespace {ns}, work dir {work}")
            proc, env = start_agent(work)
            try:
                check([*COVE, "network", "create", "benchrun", "--subnet", "10.93.0.0/24"], env)
                check([*podman, "network", "create", "--subnet", "10.94.0.0/24", "benchrun"])
                daemons = [proc.pid]
                cove_load, pod_load = Meter(lambda: daemons), Meter()
                for _ in range(loads):
                    cove_load(lambda: check([*COVE, "image", "load", "-q", "-i", str(archive)],
                                            env))  # fmt: skip
                    check([*COVE, "rmi", IMAGE], env)
                    pod_load(lambda: check([*podman, "load", "-q", "-i", str(archive)]))
                    check([*podman, "rmi", IMAGE])
                check([*COVE, "image", "load", "-q", "-i", str(archive)], env)
                check([*podman, "load", "-q", "-i", str(archive)])
                net = ["--network", "benchrun"]

                def cove_detached() -> None:
                    cid = check([*COVE, "run", "-d", *net, IMAGE, "true"], env).strip()
                    check([*COVE, "rm", "-f", cid], env)

                def pod_detached() -> None:
                    cid = check([*podman, "run", "-d", *net, *limits, IMAGE, "true"]).strip()
                    check([*podman, "rm", "-f", cid])

                # one of each first, untimed: what is paid once (the
                # supervisor's start, the bridge) is not a per-run cost
                check([*COVE, "run", "--rm", *net, IMAGE, "true"], env)
                daemons.append(int((work / "state" / "run" / "supervisor.pid").read_text()))
                try:
                    check([*podman, "run", "--rm", *net, *limits, IMAGE, "true"])
                except SystemExit as exc:  # this host may not let podman run at all
                    pod_error = str(exc)
                cove_rm, cove_d = Meter(lambda: daemons), Meter(lambda: daemons)
                pod_rm, pod_d = Meter(), Meter()
                for _ in range(runs):
                    cove_rm(lambda: check([*COVE, "run", "--rm", *net, IMAGE, "true"], env))
                    cove_d(cove_detached)
                    if pod_error:
                        continue
                    pod_rm(lambda: check([*podman, "run", "--rm", *net, *limits, IMAGE, "true"]))
                    pod_d(pod_detached)
                left = check([*COVE, "ps", "-a", "-q"], env).split()
                if left:
                    raise SystemExit(f"cove left containers behind: {left}")
                results = {
                    "run --rm": (cove_rm, pod_rm),
                    "run -d+rm": (cove_d, pod_d),
                    "load": (cove_load, pod_load),
                }
            finally:
                proc.terminate()
                proc.wait(30)
                teardown(work / "state" / "run")
                subprocess.run([*podman, "system", "reset", "-f"], capture_output=True,
                               timeout=120)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nmilliseconds, median (p95) of {runs} runs and {loads} loads;"
          " CPU: mean per command")  # fmt: skip
    print(f"{'':11}{'cove':>16}{'podman':>16}{'ratio':>8}{'cove CPU':>10}{'podman CPU':>12}")
    for label, (c, p) in results.items():
        if not c.wall:
            continue
        cm, c95 = stats(c.wall)
        ccpu = statistics.mean(c.cpu) * 1000
        if not p.wall:
            print(f"{label:11}{cm:9.1f} ({c95:5.0f}){'-':>16}{'-':>8}{ccpu:10.0f}{'-':>12}")
            continue
        pm, p95 = stats(p.wall)
        pcpu = statistics.mean(p.cpu) * 1000
        print(f"{label:11}{cm:9.1f} ({c95:5.0f}){pm:9.1f} ({p95:5.0f}){cm / pm:8.2f}"
              f"{ccpu:10.0f}{pcpu:12.0f}")  # fmt: skip
    if pod_error:
        print(f"podman run could not run here: {pod_error[-300:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
