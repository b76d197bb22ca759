"""Networks on a real kernel, through a real agent in a host namespace."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from agentproc import AgentProc
from netutil import connect, outside, plugged, sh, tcp_server

pytestmark = pytest.mark.root


def bridges() -> dict[str, dict[str, object]]:
    out = json.loads(sh("ip", "-j", "-d", "addr", "show", "type", "bridge").stdout or "[]")
    return {b["ifname"]: b for b in out if b["ifname"].startswith("cv-")}


def addrs(bridge: dict[str, object]) -> set[str]:
    infos = bridge.get("addr_info", [])
    assert isinstance(infos, list)
    return {f"{a['local']}/{a['prefixlen']}" for a in infos if a.get("scope") == "global"}


def summary() -> dict[str, tuple[object, set[str]]]:
    return {name: (b["mtu"], addrs(b)) for name, b in bridges().items()}


def nft_cove() -> str:
    return sh("nft", "list", "table", "inet", "cove", check=False).stdout


def inspect(agent: AgentProc, name: str) -> dict[str, object]:
    data = json.loads(agent.ok("network", "inspect", name))
    assert isinstance(data, list)
    return data[0]  # type: ignore[no-any-return]


def test_create_shows_in_kernel_and_cli(agent: AgentProc) -> None:
    agent.ok("network", "create", "vnet", "--subnet", "10.89.0.0/24", "--mtu", "1400",
             "--label", "team=core")  # fmt: skip
    agent.ok("network", "create", "dual", "--ipv6", "--subnet", "fd00:ab::/64")
    net = inspect(agent, "vnet")
    br = bridges()[str(net["bridge"])]
    assert addrs(br) == {"10.89.0.1/24"}
    assert br["mtu"] == 1400 and "UP" in br["flags"]
    dual = inspect(agent, "dual")
    assert addrs(bridges()[str(dual["bridge"])]) == {"10.89.1.1/24", "fd00:ab::1/64"}
    listed = json.loads(agent.ok("network", "ls", "--format", "json"))
    assert {n["name"] for n in listed} == {"vnet", "dual"}
    assert next(n for n in listed if n["name"] == "vnet")["labels"] == {"team": "core"}
    rules = nft_cove()
    assert "10.89.0.0/24" in rules and "masquerade" in rules
    agent.ok("network", "rm", "vnet", "dual")
    assert bridges() == {}
    assert "10.89.0.0/24" not in nft_cove()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["network", "create", "bad/name"], 2, "invalid network name"),
        (["network", "create", "a" * 130], 2, "at most 128"),
        (["network", "create", "x", "--subnet", "10.1.0.0/33"], 2, "invalid subnet"),
        (["network", "create", "x", "--subnet", "10.89.0.0/16"], 5, "overlaps network base"),
        (["network", "create", "x", "--subnet", "10.2.0.0/24", "--gateway", "10.3.0.1"], 2,
         "outside subnet"),
        (["network", "create", "base"], 4, "already exists"),
        (["network", "rm", "nosuch"], 3, "not found"),
        (["network", "inspect", "nosuch"], 3, "not found"),
    ],
)  # fmt: skip
def test_bad_input_changes_nothing(
    agent: AgentProc, args: list[str], code: int, message: str
) -> None:
    agent.ok("network", "create", "base", "--subnet", "10.89.7.0/24")
    before = (summary(), nft_cove(), agent.ok("network", "ls", "--format", "json"))
    res = agent.cli(*args)
    assert res.returncode == code, res.stderr
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert (summary(), nft_cove(), agent.ok("network", "ls", "--format", "json")) == before


def test_api_errors_are_json_4xx(agent: AgentProc) -> None:
    status, body = agent.api("POST", "/api/networks", {"name": "n", "mtu": "x"})
    assert status == 400 and "mtu" in body["error"]
    status, body = agent.api("GET", "/api/networks/nope")
    assert status == 404 and body["kind"] == "not_found"
    status, body = agent.api("POST", "/api/networks", {"name": "ok1"})
    assert status == 201 and body["subnets"][0]["subnet"] == "10.89.0.0/24"


def test_egress_nat_and_internal_networks(agent: AgentProc) -> None:
    agent.ok("network", "create", "pub", "--subnet", "10.89.10.0/24")
    agent.ok("network", "create", "priv", "--subnet", "10.89.11.0/24", "--internal")
    pub = str(inspect(agent, "pub")["bridge"])
    priv = str(inspect(agent, "priv")["bridge"])
    with (
        outside() as out,
        tcp_server(out, "198.51.100.2", 7000),
        plugged(pub, "10.89.10.5/24", "10.89.10.1") as c1,
        plugged(priv, "10.89.11.5/24", "10.89.11.1") as c2,
    ):
        # The outside world sees the host's address, not the container's.
        assert connect(c1, "198.51.100.2", 7000) == "198.51.100.1"
        # An internal network has no way out at all.
        assert connect(c2, "198.51.100.2", 7000, timeout=1.0) is None


def test_networks_are_isolated_from_each_other(agent: AgentProc) -> None:
    agent.ok("network", "create", "na", "--subnet", "10.89.20.0/24")
    agent.ok("network", "create", "nb", "--subnet", "10.89.21.0/24")
    na = str(inspect(agent, "na")["bridge"])
    nb = str(inspect(agent, "nb")["bridge"])
    with (
        plugged(na, "10.89.20.5/24", "10.89.20.1") as a1,
        plugged(na, "10.89.20.6/24", "10.89.20.1") as a2,
        plugged(nb, "10.89.21.5/24", "10.89.21.1") as b1,
        tcp_server(a2, "0.0.0.0", 7001),
        tcp_server(b1, "0.0.0.0", 7001),
    ):
        assert connect(a1, "10.89.20.6", 7001) == "10.89.20.5"  # same network: direct
        assert connect(a1, "10.89.21.5", 7001, timeout=1.0) is None  # across: dropped
        assert connect(b1, "10.89.20.6", 7001, timeout=1.0) is None


def test_reconcile_repairs_drift(agent: AgentProc) -> None:
    agent.ok("network", "create", "heal", "--subnet", "10.89.30.0/24")
    br = str(inspect(agent, "heal")["bridge"])
    sh("ip", "link", "del", br)
    sh("ip", "link", "add", "cv-stray0000001", "type", "bridge")
    sh("nft", "delete", "table", "inet", "cove")
    deadline_ok = False
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        b = bridges()
        if (
            br in b
            and addrs(b[br]) == {"10.89.30.1/24"}
            and "cv-stray0000001" not in b
            and ("10.89.30.0/24" in nft_cove())
        ):
            deadline_ok = True
            break
        time.sleep(0.2)
    assert deadline_ok, "the agent did not repair the bridge, the stray link or the table"


def test_restart_keeps_networks_and_converges(agent: AgentProc) -> None:
    agent.ok("network", "create", "keep", "--subnet", "10.89.40.0/24")
    br = str(inspect(agent, "keep")["bridge"])
    agent.kill9()
    sh("ip", "link", "del", br)  # the kernel lost it while the agent was down
    agent.start()
    assert addrs(bridges()[br]) == {"10.89.40.1/24"}
    assert [n["name"] for n in json.loads(agent.ok("network", "ls", "--format", "json"))] == [
        "keep"
    ]


def test_sigterm_exits_cleanly(agent: AgentProc) -> None:
    assert agent.stop() == 0
    assert not agent.socket.exists()
    agent.start()


def test_cli_without_agent_says_so() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "cove.cli.main", "network", "ls"],
        env={"COVE_SOCKET": "/nonexistent/agent.sock"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 8 and "cannot reach the cove agent" in res.stderr


def test_metrics_count_networks(agent: AgentProc) -> None:
    import urllib.request

    agent.ok("network", "create", "m1")
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.http_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert "\ncove_networks 1\n" in text and "cove_store_revision" in text
    # The watch cache's size: the network's record is in it (SQLite: one
    # listener, no streams of its own, shown as one).
    assert "\ncove_watch_streams 1\n" in text
    cached = [line for line in text.splitlines() if line.startswith("cove_watch_cache_keys ")]
    assert cached and float(cached[0].split()[1]) >= 1


def test_default_subnet_avoids_host_routes_and_addresses(agent: AgentProc) -> None:
    sh("ip", "addr", "add", "10.89.0.7/32", "dev", "lo")
    with outside("10.89.1.1/24", "10.89.1.2/24"):
        agent.ok("network", "create", "auto")
        (net,) = json.loads(agent.ok("network", "inspect", "auto"))
        assert net["subnets"][0]["subnet"] == "10.89.2.0/24"
        res = agent.cli("network", "create", "clash", "--subnet", "10.89.1.0/24")
        assert res.returncode == 5 and "host route" in res.stderr
