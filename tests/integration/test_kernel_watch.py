"""The kernel's own notifications of container links, addresses and routes
(``KernelWatch``), in a namespace that plays the host and a container
namespace attached the way ``cove run`` attaches one."""

from __future__ import annotations

import ipaddress
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute
from test_containers_helpers import (  # noqa: F401 - fixtures
    address,
    eventually,
    inspect,
    need_containers,
    runtime_cleanup_fixture,
)

from cove.datapath.linkwatch import KernelWatch
from cove.datapath.netns import NetnsDatapath

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]

BRIDGE = "cv-kwatch0000"
VETH = "cv00000000ab"


class Heard:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        self.event.set()

    def wait(self, timeout: float = 5.0) -> bool:
        got = self.event.wait(timeout)
        self.event.clear()
        return got

    def quiet(self, seconds: float = 0.5) -> bool:
        """Nothing heard for ``seconds`` (what was heard before is forgotten)."""
        got = self.event.wait(seconds)
        self.event.clear()
        return not got


@pytest.fixture
def container(hostns: str, tmp_path: Path) -> Iterator[NetnsDatapath]:
    dp = NetnsDatapath(tmp_path / "netns")
    # No IPv6 in the test's host namespace either: the host veth's and the
    # bridge's duplicate address detection would report addresses a second
    # or more later (later still on a loaded machine), into the quiet checks.
    subprocess.run(
        ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
         "net.ipv6.conf.default.disable_ipv6=1"],
        check=True,
    )  # fmt: skip
    with IPRoute() as ipr:
        ipr.link("add", ifname=BRIDGE, kind="bridge")
        ipr.link("set", ifname=BRIDGE, state="up")
    try:
        dp.create_netns("c1")
        # No IPv6 inside: its duplicate address detection would report
        # a new address a second or more after the link comes up.
        subprocess.run(
            ["nsenter", f"--net={dp.netns_path('c1')}", "sysctl", "-qw",
             "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
            check=True,
        )  # fmt: skip
        addr = ipaddress.ip_interface("10.78.0.2/24")
        dp.attach("c1", VETH, "eth0", "02:00:00:00:00:ab", 1500, BRIDGE, [addr])
        yield dp
    finally:
        dp.delete_netns("c1")
        dp.close()
        with IPRoute() as ipr:
            for name in (VETH, BRIDGE, "kwother0"):
                found = ipr.link_lookup(ifname=name)
                if found:
                    ipr.link("del", index=found[0])


def inside(dp: NetnsDatapath, *args: str) -> None:
    subprocess.run(
        ["nsenter", f"--net={dp.netns_path('c1')}", "ip", *args], check=True, capture_output=True
    )


def test_changes_inside_a_container_and_to_its_host_veth_are_heard(
    container: NetnsDatapath,
) -> None:
    heard = Heard()
    watch = KernelWatch(heard)
    watch.start()
    try:
        # Nothing happens, nothing is heard (once the set-up's own news,
        # delivered late on a loaded machine, has passed).
        assert any(heard.quiet(1.5) for _ in range(6))
        settled = heard.count
        assert heard.quiet(1.5) and heard.count == settled
        inside(container, "addr", "flush", "dev", "eth0")
        assert heard.wait()
        inside(container, "link", "set", "eth0", "down")
        assert heard.wait()
        # The host's own links that are not cove's veths are not ours.
        assert any(heard.quiet(0.5) for _ in range(10))
        with IPRoute() as ipr:
            ipr.link("add", ifname="kwother0", kind="bridge")
            ipr.link("set", ifname="kwother0", state="up")
        assert heard.quiet()
        with IPRoute() as ipr:
            ipr.link("set", ifname=VETH, state="down")
        assert heard.wait()
        with IPRoute() as ipr:
            ipr.link("del", index=ipr.link_lookup(ifname=VETH)[0])
        assert heard.wait()
    finally:
        watch.stop()
    count = heard.count
    inside(container, "link", "add", "b1", "type", "bridge")
    assert heard.quiet() and heard.count == count  # stopped: nothing more


def test_an_idle_agent_repairs_a_containers_link_changed_by_hand(agent: Any) -> None:
    """Between safety-net passes an idle agent reads no namespace: what a
    hand inside a container breaks is repaired because the kernel said so."""
    need_containers(agent)
    agent.ok("network", "create", "kwnet", "--subnet", "10.87.0.0/24")
    agent.ok("run", "-d", "--name", "kw", "--network", "kwnet", "--", "sleep", "600")
    cid = inspect(agent, "kw")["id"]
    path = agent.state_dir / "run" / "netns" / cid
    addr = address(agent, "kw", "kwnet")

    def show() -> str:
        return subprocess.run(
            ["nsenter", f"--net={path}", "ip", "-4", "addr", "show", "dev", "eth0"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    assert addr in show()
    subprocess.run(["nsenter", f"--net={path}", "ip", "addr", "flush", "dev", "eth0"], check=True)
    assert addr not in show()
    eventually(lambda: addr in show() and "state UP" in show())
    subprocess.run(["nsenter", f"--net={path}", "ip", "link", "set", "eth0", "down"], check=True)
    eventually(lambda: "state UP" in show() or ",UP" in show())
