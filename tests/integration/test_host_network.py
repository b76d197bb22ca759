"""`cove run --network host`: the container shares the host's (here, the
agent's) network namespace as in Docker, with no veth, address or DNS name
of its own, its published ports discarded with Docker's warning, and its
filesystem still isolated."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    eventually,
    host_veths,
    inspect,
    need_containers,
    netns_files,
    runtime_cleanup_fixture,
    scripts_fixture,
    tcp,
)

from imageutil import Img, busybox_layer, oci_archive

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]


def _interfaces(text: str) -> set[str]:
    """The interface names of a /proc/net/dev text."""
    return {line.split(":")[0].strip() for line in text.splitlines() if ":" in line}


def _exited(agent: Any, *args: str) -> tuple[int, str]:
    name = agent.ok("run", "-d", *args).strip()
    eventually(lambda: inspect(agent, name)["state"]["status"] == "exited")
    return inspect(agent, name)["state"]["exit_code"], agent.output(name)


def test_a_host_network_container_shares_the_hosts_namespace(
    agent: Any, scripts: tuple[str, str], tmp_path: Path
) -> None:
    need_containers(agent)
    echo, _ = scripts
    agent.ok("network", "create", "hn", "--subnet", "10.231.7.0/24")
    agent.ok("run", "-d", "--name", "peer", "--network", "hn", "--", "sleep", "600")
    veths, files = host_veths(), netns_files(agent)
    res = agent.cli("run", "-d", "--name", "h", "--network", "host", "-p", "9999:7",
                    "--", "python3", "-S", "-u", echo, "7077")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Published ports are discarded when using host network mode" in res.stderr
    # A listener in the container is one of the host's: reached on its loopback.
    assert eventually(lambda: tcp("127.0.0.1", 7077)) == f"{socket.gethostname()}:ping"
    with pytest.raises(OSError):
        tcp("127.0.0.1", 9999, timeout=1)  # -p was discarded, nothing published
    # It sees the host's interfaces (the bridge of hn, the peer's veth) ...
    host_ifaces = _interfaces(Path("/proc/net/dev").read_text())
    inside = _interfaces(agent.ok("exec", "h", "--", "cat", "/proc/net/dev"))
    assert inside == host_ifaces and len(inside) > 2
    # ... and got nothing of its own: no veth, no namespace, no address, no name.
    assert host_veths() == veths and netns_files(agent) == files
    info = inspect(agent, "h")
    assert info["host_config"]["network_mode"] == "host"
    assert info["network_mode"] == "host"
    assert info["endpoints"] == {} and info["ports"] == []
    assert info["network_settings"]["ip_address"] == ""
    assert inspect(agent, "peer")["host_config"]["network_mode"] == "hn"
    assert agent.ok("inspect", "-f", "{{.HostConfig.NetworkMode}}", "h").strip() == "host"
    row = next(line for line in agent.ok("ps").splitlines() if " h " in f" {line} ")
    assert " host " in f" {row} "
    assert agent.ok("ps", "-q", "--filter", "network=host").split() == [info["short_id"]]
    assert agent.cli("exec", "peer", "--", "getent", "hosts", "h").returncode != 0
    # The filesystem is still the container's: the host's tree read-only.
    probe = Path("/etc") / f"cove-hostnet-{tmp_path.name}"
    res = agent.cli("exec", "h", "--", "touch", str(probe))
    assert res.returncode != 0 and not probe.exists()
    # It outlives an agent restart, and the restarted agent's passes build
    # nothing for it.
    pid = info["state"]["pid"]
    agent.stop()
    agent.start()
    # (its first full pass ran before the agent answered)
    assert tcp("127.0.0.1", 7077).endswith(":ping")
    assert inspect(agent, "h")["state"]["pid"] == pid
    assert host_veths() == veths and netns_files(agent) == files
    # Removed: nothing left behind, the host's interfaces untouched.
    agent.ok("rm", "-f", "h")
    assert _interfaces(Path("/proc/net/dev").read_text()) == host_ifaces
    assert host_veths() == veths and netns_files(agent) == files


def test_an_image_container_on_the_host_network(agent: Any, tmp_path: Path) -> None:
    need_containers(agent)
    oci_archive(tmp_path / "bb.tar", Img([busybox_layer()], cmd=["sh"]), "localhost/bb:latest")
    agent.ok("image", "load", "-i", str(tmp_path / "bb.tar"))
    script = "cat /proc/net/dev; echo =; cat /etc/hosts; echo =; ls /; hostname"
    code, out = _exited(
        agent, "--network", "host", "--add-host", "extra:10.9.9.9", "bb", "sh", "-c", script
    )
    assert code == 0
    netdev, hosts, rest = out.split("=\n")
    assert _interfaces(netdev) == _interfaces(Path("/proc/net/dev").read_text())
    # the host's /etc/hosts and the --add-host line, as Docker's
    assert hosts == Path("/etc/hosts").read_text() + "10.9.9.9\textra\n"
    assert "usr" not in rest.split()  # the image's root, not the host's
    assert rest.splitlines()[-1] == socket.gethostname()


def test_what_cannot_go_with_host_networking_is_refused(agent: Any) -> None:
    need_containers(agent)
    agent.ok("run", "-d", "--name", "h", "--network", "host", "--", "sleep", "600")
    before = agent.ok("ps", "-aq")
    cases = [
        (["--network", "host", "--network", "bridge"], "cannot go with other networks"),
        (["--network", "host", "--ip", "10.1.2.3"], "--ip cannot go with --network host"),
        (["--network", "host", "--alias", "x"], "--alias cannot go with --network host"),
        (["--network", "host", "--service", "web:80"], "--service cannot go with"),
    ]
    for args, message in cases:
        res = agent.cli("run", "-d", *args, "--", "true")
        assert res.returncode != 0 and message in res.stderr, (args, res.stderr)
    agent.ok("network", "create", "hc", "--subnet", "10.231.8.0/24")
    res = agent.cli("network", "connect", "hc", "h")
    assert res.returncode != 0 and "uses the host's network" in res.stderr
    res = agent.cli("service", "add", "web", "--container", "h", "--port", "80")
    assert res.returncode != 0 and "no address of its own" in res.stderr
    assert agent.ok("ps", "-aq") == before
    assert json.loads(agent.ok("ps", "--format", "json"))[0]["endpoints"] == {}
