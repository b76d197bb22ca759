"""The CNI files cove writes: one conflist per network, named so a chosen
network sorts first (containerd reads only the first file), only cove's
own files ever replaced or removed; the plugin as one runnable file. All
in temporary directories, never /etc/cni/net.d."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cove.cni import conflist
from cove.cni.attachments import AttachRequest
from cove.errors import InvalidArgument
from cove.model import Network, Subnet


def _net(name: str, **labels: str) -> Network:
    sub = Subnet(ipaddress.ip_network("10.9.0.0/24"), ipaddress.ip_address("10.9.0.1"))
    return Network(id="x" * 12, name=name, subnets=(sub,), bridge="cv-x", labels=labels)


def test_one_conflist_per_network_and_priority_sorts_first(tmp_path: Path) -> None:
    sock = Path("/run/cove/agent.sock")
    other = tmp_path / "20-other.conflist"
    other.write_text('{"name": "other", "plugins": [{"type": "bridge"}]}')
    written, removed = conflist.sync(
        tmp_path, [_net("vnet"), _net("pods", **{"cni.priority": "10"})], sock
    )
    assert written == ["10-cove-pods.conflist", "50-cove-vnet.conflist"]
    assert removed == []
    # containerd takes the first file: the network labelled 10.
    assert sorted(p.name for p in tmp_path.iterdir())[0] == "10-cove-pods.conflist"
    data = json.loads((tmp_path / "50-cove-vnet.conflist").read_text())
    assert data["cniVersion"] == "1.0.0" and data["name"] == "vnet"
    (plugin,) = data["plugins"]
    assert plugin["type"] == "cove-cni" and plugin["network"] == "vnet"
    assert plugin["agentSocket"] == str(sock)
    assert plugin["capabilities"]["portMappings"] is True
    # Unchanged: nothing rewritten. A removed network: its file goes, and
    # only cove's files are ever touched.
    assert conflist.sync(
        tmp_path, [_net("vnet"), _net("pods", **{"cni.priority": "10"})], sock
    ) == (
        [],
        [],
    )
    written, removed = conflist.sync(tmp_path, [_net("vnet")], sock)
    assert (written, removed) == ([], ["10-cove-pods.conflist"])
    assert other.exists()
    # A bad priority label falls back to 50.
    assert conflist.file_name(_net("n", **{"cni.priority": "1; rm"})) == "50-cove-n.conflist"


@pytest.mark.parametrize("compiler", [None, "auto"])
def test_installed_plugin_runs_alone(tmp_path: Path, compiler: str | None) -> None:
    if compiler == "auto" and shutil.which("cc") is None:
        pytest.skip("no C compiler")
    path = conflist.install_plugin(tmp_path / "bin", sys.executable, compiler)
    assert os.access(path, os.X_OK)
    script = path if compiler is None else path.with_name("cove-cni.py")
    assert script.read_text().startswith(f"#!{sys.executable} -IS\n")
    if compiler == "auto":
        assert path.read_bytes()[:4] == b"\x7fELF"  # the shim, in front of the script
    for version in ("0.4.0", "1.1.0"):
        res = subprocess.run(
            [str(path)],
            input=json.dumps({"cniVersion": version}),
            env={"CNI_COMMAND": "VERSION"},
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(res.stdout)["cniVersion"] == version


def test_attach_requests_are_checked() -> None:
    base = {"containerID": "abc", "ifname": "eth0", "netns": "/run/netns/x", "network": "n"}
    req = AttachRequest.from_json(
        {
            **base,
            "ips": ["10.0.0.5", "10.0.0.5/24"],
            "aliases": ["Www", "bad name!", "www"],
            "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "TCP"}],
            "mac": "02:AA:bb:cc:dd:ee",
        }
    )
    assert req.ips == (ipaddress.ip_address("10.0.0.5"),)
    assert req.aliases == ("www",)
    assert str(req.ports[0]) == "8080:80/tcp"
    assert req.mac == "02:aa:bb:cc:dd:ee"
    for bad in (
        {"containerID": "../x"},
        {"ifname": "a/b"},
        {"netns": "relative"},
        {"ips": ["nope"]},
        {"ips": ["10.0.0.1", "10.0.0.2"]},
        {"mac": "01:00:00:00:00:01"},
        {"mac": "zz"},
        {"portMappings": [{"hostPort": 0, "containerPort": 80}]},
        {"services": ["web"]},
    ):
        try:
            AttachRequest.from_json({**base, **bad})
        except InvalidArgument:
            continue
        raise AssertionError(f"accepted {bad}")
