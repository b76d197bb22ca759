"""Starting a container from an image and loading an image: cove side by
side with podman, on the same busybox image and with no network for
either (cove's default; ``--network none`` for podman), in one run, inside
a host namespace this script creates and removes.

run:  ``cove run --name N IMAGE true`` (waits for the exit, as ``run``
      without ``-d`` does) then ``cove rm N`` (``--rm`` is not in this
      branch), against ``podman run --rm --network none IMAGE true``.
load: ``cove image load -i A`` against ``podman load -i A`` of the same
      docker-archive (each followed by an untimed ``rmi``).

podman keeps its images in a store of its own under the work directory,
so the host's podman storage is not touched.

    .venv/bin/python bench/run/run.py [--runs 20] [--loads 5]
"""

from __future__ import annotations

import argparse
import os
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


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def check(argv: list[str], env: dict[str, str] | None = None) -> None:
    res = subprocess.run(argv, capture_output=True, env=env, timeout=120)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])}... failed: {res.stderr.decode()[-800:]}")


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (namespaces, mounts)")
    if shutil.which("podman") is None:
        raise SystemExit("podman is not installed (apt-get install podman)")
    work = Path(tempfile.mkdtemp(prefix="cove-bench-run-", dir="/var/tmp"))
    archive = work / "bb.tar"
    docker_archive(archive, Img([busybox_layer()], cmd=["sh"]), "localhost/benchbb:latest")
    podman = ["podman", "--root", str(work / "podman"), "--runroot", str(work / "podman-run"),
              "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs",
              "--events-backend", "none"]  # fmt: skip
    image = "localhost/benchbb:latest"
    results: dict[str, list[float]] = {}
    with host_namespace() as ns:
        print(f"host namespace {ns}, work dir {work}")
        proc, env = start_agent(work)
        try:
            cove_load, pod_load = [], []
            for _ in range(args.loads):
                cove_load.append(timed(lambda: check([*COVE, "image", "load", "-q", "-i",
                                                      str(archive)], env)))  # fmt: skip
                check([*COVE, "rmi", image], env)
                pod_load.append(timed(lambda: check([*podman, "load", "-q", "-i", str(archive)])))
                check([*podman, "rmi", image])
            check([*COVE, "image", "load", "-q", "-i", str(archive)], env)
            check([*podman, "load", "-q", "-i", str(archive)])
            cove_run, pod_run = [], []
            for i in range(args.runs):
                name = f"bench{i}"

                def cove_once(name: str = name) -> None:
                    check([*COVE, "run", "--name", name, image, "true"], env)
                    check([*COVE, "rm", name], env)

                cove_run.append(timed(cove_once))
                pod_run.append(timed(lambda: check([*podman, "run", "--rm", "--network", "none",
                                                    image, "true"])))  # fmt: skip
            results = {"run": cove_run, "prun": pod_run, "load": cove_load, "pload": pod_load}
        finally:
            proc.terminate()
            proc.wait(30)
            teardown(work / "state" / "run")
            subprocess.run([*podman, "system", "reset", "-f"], capture_output=True, timeout=120)
    print(f"\nmilliseconds, median (p95) of {args.runs} runs and {args.loads} loads")
    print(f"{'':10}{'cove':>16}{'podman':>16}{'ratio':>8}")
    for label, c, p in (("run+rm", results["run"], results["prun"]),
                        ("load", results["load"], results["pload"])):  # fmt: skip
        cm, pm = statistics.median(c) * 1000, statistics.median(p) * 1000
        c95 = sorted(c)[int(0.95 * (len(c) - 1))] * 1000
        p95 = sorted(p)[int(0.95 * (len(p) - 1))] * 1000
        print(f"{label:10}{cm:9.1f} ({c95:5.0f}){pm:9.1f} ({p95:5.0f}){cm / pm:8.2f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
