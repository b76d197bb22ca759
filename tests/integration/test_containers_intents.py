"""A run interrupted between the supervisor's create and start (the agent
killed with -9 right there) is finished by the next agent: the container
runs, on its network, and nothing leaks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    address,
    assert_no_leaks,
    eventually,
    inspect,
    need_containers,
    runtime_cleanup_fixture,
    scripts_fixture,
    tcp,
)

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]


@pytest.fixture
def net(agent: Any) -> Any:
    need_containers(agent)
    agent.ok("network", "create", "vnet", "--subnet", "10.89.0.0/24")
    return agent


def _restart_with_fault(agent: Any, fault: str) -> None:
    agent.stop()
    agent.start(env={"COVE_TEST_FAULT": fault})


def test_kill9_between_create_and_start_is_finished_by_the_restart(
    net: Any, scripts: tuple[str, str]
) -> None:
    echo, _ = scripts
    _restart_with_fault(net, "run:created=kill")
    res = net.cli("run", "-d", "--name", "half", "--network", "vnet", "--",
                  "python3", "-S", "-u", echo, "7")  # fmt: skip
    assert res.returncode != 0  # the agent died mid-request
    assert net.proc.wait(10) is not None

    net.start()  # no fault this time
    state = eventually(lambda: _running(net, "half"), timeout=15)
    assert state["pid"] > 0
    addr = address(net, "half", "vnet")
    assert eventually(lambda: tcp(addr, 7)) == "half:ping"
    assert_no_leaks(net, 1)
    net.ok("rm", "-f", "half")
    assert_no_leaks(net, 0)


def test_kill9_right_after_the_store_write_is_finished_by_the_restart(
    net: Any, scripts: tuple[str, str]
) -> None:
    echo, _ = scripts
    _restart_with_fault(net, "run:stored=kill")
    res = net.cli("run", "-d", "--name", "early", "--network", "vnet", "--",
                  "python3", "-S", "-u", echo, "7")  # fmt: skip
    assert res.returncode != 0
    net.start()
    eventually(lambda: _running(net, "early"), timeout=15)
    addr = address(net, "early", "vnet")
    assert eventually(lambda: tcp(addr, 7)) == "early:ping"
    assert_no_leaks(net, 1)


def test_kill9_before_the_store_write_leaves_nothing(net: Any, scripts: tuple[str, str]) -> None:
    echo, _ = scripts
    _restart_with_fault(net, "run:recorded=kill")
    res = net.cli("run", "-d", "--name", "never", "--network", "vnet", "--",
                  "python3", "-S", "-u", echo, "7")  # fmt: skip
    assert res.returncode != 0
    net.start()
    assert json.loads(net.ok("ps", "-a", "--format", "json")) == []
    assert_no_leaks(net, 0)
    # its address was never given out: the next container gets the first one
    net.ok("run", "-d", "--name", "next", "--network", "vnet", "--",
           "python3", "-S", "-u", echo, "7")  # fmt: skip
    assert address(net, "next", "vnet") == "10.89.0.2"


def _running(agent: Any, name: str) -> dict[str, Any] | None:
    state: dict[str, Any] = inspect(agent, name)["state"]
    return state if state["status"] == "running" else None
