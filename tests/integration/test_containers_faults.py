"""Containers under faults: the agent killed with -9 (containers survive,
a restart adopts them, nothing leaks), and many concurrent runs."""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    address,
    assert_no_leaks,
    eventually,
    inspect,
    need_containers,
    run_echo,
    runtime_cleanup_fixture,
    scripts_fixture,
    tcp,
    udp,
)

from agentproc import pid_alive

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]


@pytest.fixture
def net(agent: Any) -> Any:
    need_containers(agent)
    agent.ok("network", "create", "vnet", "--subnet", "10.89.0.0/22")
    return agent


def test_containers_survive_agent_kill9_and_are_adopted(net: Any, scripts: tuple[str, str]) -> None:
    echo, client = scripts
    run_echo(net, "a", echo, "--network", "vnet", "-p", "18081:7")
    run_echo(net, "b", echo, "--network", "vnet")
    a, b = address(net, "a", "vnet"), address(net, "b", "vnet")
    pids = {n: inspect(net, n)["state"]["pid"] for n in ("a", "b")}
    assert eventually(lambda: tcp(a, 7)) == "a:ping"

    net.kill9()
    # no agent: the containers run on, reachable directly and through the port
    assert all(pid_alive(p) for p in pids.values())
    assert tcp(a, 7) == "a:ping" and udp(b, 7) == "b:ping"
    assert tcp("127.0.0.1", 18081) == "a:ping"

    net.start()
    for name, pid in pids.items():
        assert inspect(net, name)["state"]["pid"] == pid
        assert inspect(net, name)["state"]["status"] == "running"
    out = net.ok("exec", "b", "--", "python3", "-S", client, "tcp", "7", a)
    assert out.strip() == "a:ping"
    # a graceful stop of the agent does not stop them either
    net.stop()
    assert all(pid_alive(p) for p in pids.values())
    net.start()
    net.ok("rm", "-f", "a", "b")
    assert_no_leaks(net, 0)


def test_fifty_concurrent_runs_get_distinct_reachable_addresses(
    net: Any, scripts: tuple[str, str]
) -> None:
    echo, client = scripts
    names = [f"n{i:02d}" for i in range(50)]

    def run(name: str) -> Any:
        return net.cli("run", "-d", "--name", name, "--network", "vnet", "--",
                       "python3", "-S", "-u", echo, "7")  # fmt: skip

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(run, names))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    items = json.loads(net.ok("ps", "--format", "json"))
    addrs = {c["name"]: c["endpoints"]["vnet"]["ipv4"] for c in items}
    assert len(set(addrs.values())) == 50
    # from the host to each, and from one container to all the others
    for name, addr in addrs.items():
        assert eventually(lambda addr=addr: tcp(addr, 7)) == f"{name}:ping"
    others = [addrs[n] for n in names[1:]]
    out = net.ok("exec", names[0], "--", "python3", "-S", client, "tcp", "7", *others)
    assert out.split() == [f"{n}:ping" for n in names[1:]]
    out = net.ok("exec", names[-1], "--", "python3", "-S", client, "udp", "7", addrs[names[0]])
    assert out.strip() == f"{names[0]}:ping"
    assert_no_leaks(net, 50)
    net.ok("rm", "-f", *names)
    assert_no_leaks(net, 0)


def test_kill9_during_random_run_and_rm_then_restart_converges(
    net: Any, scripts: tuple[str, str]
) -> None:
    echo, _ = scripts
    rng = random.Random(4)
    live: list[str] = []
    done = threading.Event()

    def op(i: int) -> None:
        if live and rng.random() < 0.4:
            net.cli("rm", "-f", live.pop(rng.randrange(len(live))))
            return
        name = f"r{i:03d}"
        res = net.cli("run", "-d", "--name", name, "--network", "vnet", "--",
                      "python3", "-S", "-u", echo, "7")  # fmt: skip
        if res.returncode == 0:
            live.append(name)

    # 60 operations in three rounds (COVE_CHAOS_OPS=200 for the long run);
    # in each, the agent is killed at a random moment (mid-operation as
    # often as not), restarted, and must converge.
    rounds = max(1, int(os.environ.get("COVE_CHAOS_OPS", "60")) // 20)
    for round_ in range(rounds):
        killer = threading.Timer(rng.uniform(0.5, 5.0), lambda: (done.set(), net.kill9()))
        killer.start()
        i = round_ * 20
        while i < (round_ + 1) * 20 and not done.is_set():
            op(i)
            i += 1
        killer.join()
        done.clear()
        net.start()
        # converge: every container the store lists runs and answers
        items = eventually(lambda: _all_running(net), timeout=30)
        for c in items:
            addr = c["endpoints"]["vnet"]["ipv4"]
            assert eventually(lambda addr=addr: tcp(addr, 7)) == f"{c['name']}:ping"
        count = len(items)
        eventually(lambda count=count: _no_leaks(net, count), timeout=15)
        live[:] = [c["name"] for c in items]
        while i < (round_ + 1) * 20:
            op(i)
            i += 1
    assert_no_leaks(net, len(live))


def _all_running(agent: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(agent.ok("ps", "-a", "--format", "json"))
    states = {c["name"]: c["state"] for c in items if c["state"]["status"] != "running"}
    assert not states, states
    return items


def _no_leaks(agent: Any, count: int) -> bool:
    assert_no_leaks(agent, count)
    return True


def test_kill9_right_after_disconnects_then_restart_leaves_no_links(net: Any) -> None:
    # disconnect answers before the kernel has deleted the veth pair (it is
    # retired, then deleted in a batch): a kill -9 in between must not leak
    net.ok("network", "create", "back", "--subnet", "10.89.8.0/24")
    net.ok("run", "-d", "--name", "app", "--network", "vnet", "--", "sleep", "600")
    for _ in range(3):
        net.ok("network", "connect", "back", "app")
        net.ok("network", "disconnect", "back", "app")
    net.kill9()
    net.start()
    eventually(lambda: _no_leaks(net, 1), timeout=30)
    assert net.cli("exec", "app", "--", "ip", "link", "show", "eth1").returncode != 0
    links = net.ok("exec", "app", "--", "ip", "-o", "link")
    assert [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()] == [
        "lo",
        "eth0",
    ]


def test_connect_repairs_a_stray_link_in_the_way(net: Any) -> None:
    net.ok("network", "create", "back", "--subnet", "10.89.9.0/24")
    net.ok("run", "-d", "--name", "app", "--network", "vnet", "--", "sleep", "600")
    path = net.state_dir / "run" / "netns" / inspect(net, "app")["id"]
    # something left an eth1 inside the container: the name connect wants
    subprocess.run(
        ["nsenter", f"--net={path}", "ip", "link", "add", "eth1", "type", "veth",
         "peer", "name", "stray0"],
        check=True,
    )  # fmt: skip
    net.ok("network", "connect", "back", "app", "--ip", "10.89.9.5")
    link = net.ok("exec", "app", "--", "ip", "-o", "-4", "addr", "show", "eth1")
    assert "10.89.9.5/24" in link
    assert "stray0" not in net.ok("exec", "app", "--", "ip", "-o", "link")
    net.ok("network", "disconnect", "back", "app")
    net.ok("rm", "-f", "app")
    assert_no_leaks(net, 0)
