"""Real podman 4.3 (CNI backend, runc) on cove networks through cove-cni,
in a host namespace of the test's own (podman is entered into it with
``nsenter --net=``). podman's storage, run state, configuration and CNI
directories are all temporary (``CONTAINERS_CONF``, ``--root``,
``--runroot``, ``--cni-config-dir``); its image is a busybox rootfs
imported from a tarball (no registry)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentproc import AgentProc
from conftest import cleanup_agent

pytestmark = pytest.mark.root

BUSYBOX = Path("/bin/busybox")
FETCH = "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=2).read().decode())"
APPLETS = ("sh", "sleep", "wget", "nc", "nslookup", "httpd", "cat", "ip", "echo", "hostname")


class Podman:
    def __init__(self, hostns: str, work: Path) -> None:
        self.hostns = hostns
        self.work = work
        self.bin = work / "cni-bin"
        self.conf = work / "net.d"
        self.bin.mkdir()
        self.conf.mkdir()
        # podman refuses a runroot longer than 50 characters.
        self.runroot = Path(tempfile.mkdtemp(prefix="cvpm", dir="/tmp"))
        (work / "containers.conf").write_text(
            "[network]\n"
            'network_backend = "cni"\n'
            f'cni_plugin_dirs = ["{self.bin}", "/usr/lib/cni"]\n'
            f'network_config_dir = "{self.conf}"\n'
            "[containers]\n"
            "default_ulimits = []\n"
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{work}/events.log"\n'
            f'tmp_dir = "{work}/ptmp"\n'
        )

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        cmd = [
            "nsenter", f"--net=/run/netns/{self.hostns}",
            "podman", "--root", str(self.work / "root"), "--runroot", str(self.runroot),
            "--storage-driver", "vfs", "--cni-config-dir", str(self.conf), *args,
        ]  # fmt: skip
        env = {**os.environ, "CONTAINERS_CONF": str(self.work / "containers.conf")}
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert res.returncode == 0, f"podman {' '.join(args)}: {res.stderr}{res.stdout}"
        return res.stdout

    def cleanup(self) -> None:
        self.run("rm", "-af", "-t", "0", check=False)
        self.run("system", "reset", "-f", check=False, timeout=60)
        shutil.rmtree(self.runroot, ignore_errors=True)


def _image(podman: Podman) -> str:
    rootfs = podman.work / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        tar.add(BUSYBOX, "bin/busybox")
        for name in APPLETS:
            info = tarfile.TarInfo(f"bin/{name}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
        for d in ("tmp", "proc", "sys", "dev", "etc", "www"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
    podman.run("import", str(rootfs), "localhost/cvbb")
    return "localhost/cvbb"


@pytest.fixture
def setup(hostns: str, tmp_path: Path) -> Iterator[tuple[AgentProc, Podman, str]]:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        pytest.skip("podman and runc are not installed (make install adds them)")
    podman = Podman(hostns, tmp_path)
    agent = AgentProc(hostns, tmp_path, "--cni-conf-dir", str(podman.conf))
    agent.start()
    try:
        image = _image(podman)
        yield agent, podman, image
    finally:
        podman.cleanup()
        cleanup_agent(agent)


def _endpoint(agent: AgentProc, name: str) -> dict[str, Any] | None:
    status, body = agent.api("GET", "/api/networks/vnet")
    assert status == 200
    return next((e for e in body["endpoints"] if e["container_name"] == name), None)


def _dig(agent: AgentProc, name: str) -> list[str]:
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(agent.dns_port), "+short", "+tries=1", "+time=2", name],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return out.stdout.split()


def _wait(what: str, check: Any, timeout: float = 15) -> None:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, what
        time.sleep(0.2)


def test_podman_containers_join_cove_networks(setup: tuple[AgentProc, Podman, str]) -> None:
    agent, podman, image = setup
    agent.ok("cni", "install", "--bin-dir", str(podman.bin), "--conf-dir", str(podman.conf))
    agent.ok("network", "create", "vnet", "--subnet", "10.89.7.0/24")
    # The agent writes the network's conflist; podman sees the network.
    _wait("no conflist for vnet", lambda: (podman.conf / "50-cove-vnet.conflist").exists())
    conf = json.loads((podman.conf / "50-cove-vnet.conflist").read_text())
    assert conf["cniVersion"] == "1.0.0" and conf["plugins"][0]["type"] == "cove-cni"
    assert "vnet" in podman.run("network", "ls", "--format", "{{.Name}}").split()

    # A cove container and a podman container, each reaching the other by name.
    agent.ok(
        "run", "-d", "--name", "cc", "--network", "vnet", "--",
        sys.executable, "-m", "http.server", "-d", "/etc", "8080",
    )  # fmt: skip
    podman.run(
        "run", "-d", "--ulimit", "host", "--name", "web", "--network", "vnet",
        "--network-alias", "www", "-p", "18080:80", "--dns", "10.89.7.1", image,
        "sh", "-c", "echo hello-from-podman > /www/index.html; exec httpd -f -p 80 -h /www",
    )  # fmt: skip
    ep = _endpoint(agent, "web")
    assert ep is not None, "podman's container has no cove endpoint"
    addr = ep["ipv4"]
    assert addr.startswith("10.89.7.")
    inspect = json.loads(podman.run("inspect", "web"))
    assert inspect[0]["NetworkSettings"]["Networks"]["vnet"]["IPAddress"] == addr
    _wait("web not in cove's DNS", lambda: _dig(agent, "web.vnet.cove") == [addr])
    assert _dig(agent, "www.vnet.cove") == [addr]

    def cove_to_podman() -> bool:
        res = agent.cli("exec", "cc", "--", sys.executable, "-c", FETCH, "http://web/")
        return "hello-from-podman" in res.stdout

    _wait("the cove container cannot reach web by name", cove_to_podman)
    # busybox-static's wget cannot resolve (static glibc without NSS): its
    # own resolver, nslookup, asks cove's DNS through --dns; nc fetches.
    cc = _endpoint(agent, "cc")
    assert cc is not None
    found = podman.run("exec", "web", "nslookup", "cc.vnet.cove")
    assert cc["ipv4"] in found, found
    get = f"printf 'GET /hostname HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {cc['ipv4']} 8080"
    out = podman.run("exec", "web", "sh", "-c", get)
    assert out.rstrip().endswith("\ncc"), out

    # Published through cove's own port table, as `cove run -p`.
    def published() -> bool:
        try:
            with urllib.request.urlopen("http://127.0.0.1:18080/", timeout=2) as resp:
                return b"hello-from-podman" in resp.read()
        except OSError:
            return False

    _wait("port 18080 does not reach web", published)
    nft = subprocess.run(["nft", "list", "table", "inet", "cove_ports"], capture_output=True)
    assert b"18080" in nft.stdout

    # `network inspect` lists podman's container beside cove's.
    net = json.loads(agent.ok("network", "inspect", "vnet"))[0]
    assert [a["pod_name"] for a in net["cni_attachments"]] == ["web"]
    assert {e["container_name"] for e in net["endpoints"]} == {"cc", "web"}

    # `podman rm` gives the address, the name and the port back.
    podman.run("rm", "-f", "-t", "0", "web")
    assert _endpoint(agent, "web") is None
    status, atts = agent.api("GET", "/api/cni/attachments")
    assert atts == []
    _wait("web still resolves", lambda: _dig(agent, "web.vnet.cove") == [])
    _wait("18080 still published", lambda: not published())
    # The network can go once its containers are gone; its conflist goes too.
    agent.ok("rm", "-f", "cc")
    agent.ok("network", "rm", "vnet")
    _wait("conflist left", lambda: not (podman.conf / "50-cove-vnet.conflist").exists())
