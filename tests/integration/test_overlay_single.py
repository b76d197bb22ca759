"""An overlay network on a single agent (its own SQLite store): it works as
a local network does, with a VXLAN device that has nowhere to send."""

from __future__ import annotations

import json
import time

import pytest

from agentproc import AgentProc
from netutil import sh

pytestmark = pytest.mark.root


def test_overlay_on_one_host(agent: AgentProc) -> None:
    agent.ok("network", "create", "ov", "--driver", "overlay", "--subnet", "10.203.0.0/24")
    net = json.loads(agent.ok("network", "inspect", "ov"))[0]
    assert sh("ip", "-j", "link", "show", "type", "vxlan").stdout.strip() in ("", "[]")
    agent.ok("run", "-d", "--name", "a", "--network", "ov", "--", "sleep", "600")
    agent.ok("run", "-d", "--name", "b", "--network", "ov", "--", "sleep", "600")
    b = json.loads(agent.ok("inspect", "b"))
    b = b[0] if isinstance(b, list) else b
    addr = b["endpoints"]["ov"]["ipv4"]
    assert agent.cli("exec", "a", "--", "ping", "-c1", "-W2", addr).returncode == 0
    links = json.loads(sh("ip", "-d", "-j", "link", "show", "type", "vxlan").stdout)
    assert len(links) == 1
    info = links[0]["linkinfo"]["info_data"]
    assert info["id"] == net["vni"] and info["local"] == "127.0.0.1"
    assert info["proxy"] is True and info["learning"] is False
    assert links[0]["master"] == net["bridge"] and links[0]["mtu"] == 1450
    agent.ok("rm", "-f", "a", "b")
    deadline = time.monotonic() + 10
    while sh("ip", "-j", "link", "show", "type", "vxlan").stdout.strip() not in ("", "[]"):
        assert time.monotonic() < deadline, "the VXLAN device outlived the last container"
        time.sleep(0.1)
    assert net["bridge"] not in sh("ip", "link", "show").stdout
    agent.ok("network", "rm", "ov")
