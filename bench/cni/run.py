"""cove-cni against the reference CNI plugins, as a runtime drives them.

In a namespace that plays the host: N container namespaces (default 100),
each ADDed then DELed (interleaved call by call, so both see the same
load) through (a) ``cove-cni`` as ``cove cni install`` writes it (the
compiled shim when a C compiler is there, else the Python plugin run by
``python3 -IS``; one fresh process per call, asking a real cove agent) and
(b) the reference ``bridge`` + ``host-local`` plugins from
/usr/lib/cni (one process per call, the way libcni runs them). Each side
is also preceded by the VERSION call a runtime makes first. Prints the
median and p90 per call and the ratio cove / reference (goal <= 0.5).

Bounded: N <= 200 namespaces, everything inside the benchmark's own
namespace and temporary directory, removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from cove.agent.teardown import teardown
from cove.cni import conflist
from cove.model import Network

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hostns import host_namespace, ip, start_agent

CNI_BIN = Path("/usr/lib/cni")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def call(plugin: Path, command: str, conf: dict[str, object], env: dict[str, str]) -> float:
    full = {"CNI_COMMAND": command, "CNI_PATH": str(CNI_BIN), "PATH": "/usr/sbin:/usr/bin", **env}
    t = time.perf_counter()
    res = subprocess.run(
        [str(plugin)], input=json.dumps(conf).encode(), env=full, capture_output=True
    )
    took = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"{plugin.name} {command} failed: {res.stdout!r} {res.stderr!r}")
    return took


Times = tuple[list[float], list[float], list[float]]


def run_both(
    sides: list[tuple[Path, dict[str, object], str]], namespaces: list[str]
) -> list[Times]:
    """VERSION + ADD for every namespace, then DEL for every one, the
    sides interleaved call by call (each its own interface in the same
    namespace) so that both see the same machine load."""
    out: list[Times] = [([], [], []) for _ in sides]

    def env(i: int, ns: str, ifname: str) -> dict[str, str]:
        return {
            "CNI_CONTAINERID": f"bench{i:04d}",
            "CNI_IFNAME": ifname,
            "CNI_NETNS": f"/run/netns/{ns}",
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAME=bench{i}",
        }

    for i, ns in enumerate(namespaces):
        for (plugin, conf, ifname), times in zip(sides, out, strict=True):
            times[0].append(call(plugin, "VERSION", {"cniVersion": "1.0.0"}, {}))
            times[1].append(call(plugin, "ADD", conf, env(i, ns, ifname)))
    for i, ns in enumerate(namespaces):
        for (plugin, conf, ifname), times in zip(sides, out, strict=True):
            times[2].append(call(plugin, "DEL", conf, env(i, ns, ifname)))
    return out


def bench_podman(
    work: Path, host: str, plugin_dir: Path, net: Network, count: int
) -> tuple[list[float], list[float]]:
    """``podman run --rm`` (CNI backend, runc, a busybox image imported
    from a tarball) on the cove network and on a reference bridge +
    host-local network, interleaved; all of podman's state in ``work``."""
    conf_dir = work / "net.d"
    conflist.sync(conf_dir, [net], work / "agent.sock")
    ref = {
        "cniVersion": "1.0.0",
        "name": "refpod",
        "plugins": [
            {
                "type": "bridge", "bridge": "cvbpod0", "isGateway": True, "ipMasq": False,
                "ipam": {
                    "type": "host-local", "dataDir": str(work / "host-local-pod"),
                    "ranges": [[{"subnet": "10.125.0.0/16", "gateway": "10.125.0.1"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }
        ],
    }  # fmt: skip
    (conf_dir / "60-refpod.conflist").write_text(json.dumps(ref))
    (work / "containers.conf").write_text(
        f'[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["{plugin_dir}", "{CNI_BIN}"]\n'
        f'network_config_dir = "{conf_dir}"\n[containers]\ndefault_ulimits = []\n'
        f'[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
        f'events_logfile_path = "{work}/events.log"\n'
    )
    runroot = Path(tempfile.mkdtemp(prefix="cvbp", dir="/tmp"))  # podman: at most 50 chars
    env = {**os.environ, "CONTAINERS_CONF": str(work / "containers.conf")}
    base = [
        "nsenter", f"--net=/run/netns/{host}", "podman", "--root", str(work / "proot"),
        "--runroot", str(runroot), "--storage-driver", "vfs", "--cni-config-dir", str(conf_dir),
    ]  # fmt: skip
    try:
        rootfs = work / "rootfs.tar"
        with tarfile.open(rootfs, "w") as tar:
            tar.add("/bin/busybox", "bin/busybox")
            link = tarfile.TarInfo("bin/true")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        subprocess.run([*base, "import", str(rootfs), "localhost/cvbench"], env=env, check=True,
                       capture_output=True)  # fmt: skip
        times: dict[str, list[float]] = {"benchnet": [], "refpod": []}
        for i in range(count + 1):
            for name, out in times.items():
                t = time.perf_counter()
                subprocess.run(
                    [*base, "run", "--rm", "--ulimit", "host", "--network", name,
                     "localhost/cvbench", "true"],
                    env=env, check=True, capture_output=True,
                )  # fmt: skip
                if i:  # the first of each: a warm-up
                    out.append(time.perf_counter() - t)
        return times["benchnet"], times["refpod"]
    finally:
        subprocess.run([*base, "rm", "-af"], env=env, capture_output=True)
        subprocess.run([*base, "system", "reset", "-f"], env=env, capture_output=True)
        shutil.rmtree(runroot, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=100, help="container namespaces (max 200)")
    parser.add_argument("--no-shim", action="store_true", help="the Python plugin alone")
    parser.add_argument(
        "--podman", type=int, default=10, help="podman run --rm per network (max 50; 0: skip)"
    )
    args = parser.parse_args()
    count = max(1, min(args.n, 200))
    if not (CNI_BIN / "bridge").exists():
        raise SystemExit(
            "the reference plugins are missing: apt-get install containernetworking-plugins"
        )
    with tempfile.TemporaryDirectory(prefix="cove-bench-cni-") as tmp, host_namespace() as host:
        work = Path(tmp)
        proc, client = start_agent(work)
        namespaces = [f"{host}c{i}" for i in range(count)]
        try:
            client.request(
                "POST", "/api/networks", {"name": "benchnet", "subnets": ["10.123.0.0/16"]}
            )
            for ns in namespaces:
                ip("netns", "add", ns)
            plugin = conflist.install_plugin(
                work / "bin", compiler=None if args.no_shim else "auto"
            )
            kind = "compiled shim" if (work / "bin" / "cove-cni.py").exists() else "Python plugin"
            net = conflist.from_api(client.request("GET", "/api/networks/benchnet"))
            cove_conf = conflist.conflist(net, work / "agent.sock")
            cove_plugin_conf = {
                "cniVersion": "1.0.0", "name": "benchnet", **cove_conf["plugins"][0]
            }  # fmt: skip
            ref_conf = {
                "cniVersion": "1.0.0",
                "name": "refnet",
                "type": "bridge",
                "bridge": "cvbref0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(work / "host-local"),
                    "ranges": [[{"subnet": "10.124.0.0/16", "gateway": "10.124.0.1"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }
            sides = [
                (CNI_BIN / "bridge", ref_conf, "eth0"),
                (plugin, cove_plugin_conf, "eth1"),
            ]
            # One warm-up attach each (bridge creation, the agent's first request).
            ip("netns", "add", f"{host}w")
            run_both(sides, [f"{host}w"])
            ref, cove = run_both(sides, namespaces)
            pod: tuple[list[float], list[float]] | None = None
            if args.podman > 0 and shutil.which("podman") and shutil.which("runc"):
                pod = bench_podman(work, host, plugin.parent, net, min(args.podman, 50))
        finally:
            for ns in [*namespaces, f"{host}w"]:
                ip("netns", "del", ns, check=False)
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            if proc.poll() is None:
                proc.kill()
            teardown(work / "state" / "run")
    print(f"cove-cni ({kind}) vs bridge+host-local, {count} namespaces, one process per call (ms)")
    print(f"{'call':8} {'cove p50':>9} {'cove p90':>9} {'ref p50':>9} {'ref p90':>9} {'ratio':>6}")
    for name, c, r in zip(("VERSION", "ADD", "DEL"), cove, ref, strict=True):
        ratio = pct(c, 0.5) / pct(r, 0.5)
        print(
            f"{name:8} {pct(c, 0.5):9.1f} {pct(c, 0.9):9.1f} {pct(r, 0.5):9.1f} "
            f"{pct(r, 0.9):9.1f} {ratio:6.2f}"
        )
    total_c = sum(cove[1]) + sum(cove[2])
    total_r = sum(ref[1]) + sum(ref[2])
    print(f"ADD+DEL total: cove {total_c:.2f} s, reference {total_r:.2f} s, "
          f"ratio {total_c / total_r:.2f} (goal <= 0.5)")  # fmt: skip
    if pod is not None:
        c, r = pod
        print(
            f"podman run --rm ({len(c)} each): cove network p50 {pct(c, 0.5):.0f} ms, "
            f"bridge network p50 {pct(r, 0.5):.0f} ms, ratio {pct(c, 0.5) / pct(r, 0.5):.2f}"
        )


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("run as root: it makes namespaces and bridges")
    main()
