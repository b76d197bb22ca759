"""The gateway's MAC address stays put while containers come and go, so
the containers' ARP caches never point at a port that left."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    need_containers,
    runtime_cleanup_fixture,
)

from cove.datapath.netlink import bridge_mac
from netutil import sh

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]


def link_mac(name: str) -> str:
    return str(json.loads(sh("ip", "-j", "link", "show", name).stdout)[0]["address"])


def gateway_neighbour(agent: Any, container: str, gateway: str) -> str:
    out = agent.ok("exec", container, "--", "ip", "-j", "neigh", "show", gateway)
    entries = json.loads(out or "[]")
    return str(entries[0]["lladdr"]) if entries and "lladdr" in entries[0] else ""


def test_gateway_mac_is_fixed_while_containers_come_and_go(agent: Any) -> None:
    need_containers(agent)
    agent.ok("network", "create", "vnet", "--subnet", "10.89.0.0/24")
    bridge = str(json.loads(agent.ok("network", "inspect", "vnet"))[0]["bridge"])
    mac = link_mac(bridge)
    assert mac == bridge_mac(bridge)
    agent.ok("run", "-d", "--name", "first", "--network", "vnet", "--", "sleep", "600")
    # A DNS round trip to the gateway's server resolves the gateway's MAC.
    agent.ok("exec", "first", "--", "getent", "hosts", "first")
    assert gateway_neighbour(agent, "first", "10.89.0.1") == mac
    for i in range(4):
        agent.ok("run", "-d", "--name", f"c{i}", "--network", "vnet", "--", "sleep", "600")
        assert link_mac(bridge) == mac
    for i in range(4):
        agent.ok("rm", "-f", f"c{i}")
        assert link_mac(bridge) == mac
    # The first container still reaches its gateway at the address it cached.
    # A DNS round trip to the gateway's server resolves the gateway's MAC.
    agent.ok("exec", "first", "--", "getent", "hosts", "first")
    assert gateway_neighbour(agent, "first", "10.89.0.1") == mac
