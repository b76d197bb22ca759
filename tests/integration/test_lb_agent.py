"""End to end through a real `cove agent`: a VIP spreads over two
containers started with --service, and default-deny policy on the network
blocks a pair until a rule allows it. Skips until the agent serves
/api/vips and /api/policy."""

from __future__ import annotations

from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    address,
    eventually,
    need_containers,
    run_echo,
    runtime_cleanup_fixture,
    scripts_fixture,
)

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]


def need_lb_and_policy(agent: Any) -> None:
    need_containers(agent)
    for path in ("/api/vips", "/api/policy/rules"):
        status, _ = agent.api("GET", path)
        assert status == 200, f"the agent does not serve {path}"


def test_vip_spreads_over_service_containers_and_policy_denies_then_allows(
    agent: Any, scripts: tuple[str, str]
) -> None:
    need_lb_and_policy(agent)
    echo, client = scripts
    agent.ok("network", "create", "vnet", "--subnet", "10.89.0.0/24")
    for name in ("w1", "w2"):
        run_echo(agent, name, echo, "--network", "vnet", "--service", "web:7")
    agent.ok("run", "-d", "--name", "client", "--network", "vnet", "--", "sleep", "600")
    vip = agent.ok("service", "vip", "web").strip()
    assert vip.startswith("10.96.")

    def spread() -> set[str] | None:
        out = agent.ok("exec", "client", "--", "python3", "-S", client, "tcp", "7", *[vip] * 30)
        names = {line.split(":")[0] for line in out.split()}
        return names if names == {"w1", "w2"} else None

    assert eventually(spread) == {"w1", "w2"}
    # Hairpin: a backend reaches its own service's VIP, landing on itself too.
    out = agent.ok("exec", "w1", "--", "python3", "-S", client, "tcp", "7", *[vip] * 30)
    assert {line.split(":")[0] for line in out.split()} == {"w1", "w2"}
    listed = agent.ok("service", "vips")
    assert "web" in listed and vip in listed

    w1 = address(agent, "w1", "vnet")
    agent.ok("policy", "default-deny", "vnet", "on")
    denied = agent.cli("exec", "client", "--", "python3", "-S", client, "tcp", "7", w1)
    assert denied.returncode != 0
    test = agent.cli("policy", "test", "--from", "client", "--to", "w1", "--port", "7")
    assert test.returncode == 1 and "DENY" in test.stdout and "default" in test.stdout

    rule = agent.ok(
        "policy", "allow", "--network", "vnet", "--from", "client", "--to", "service:web",
        "--port", "7/tcp",
    ).strip()  # fmt: skip
    out = agent.ok("exec", "client", "--", "python3", "-S", client, "tcp", "7", w1)
    assert out.strip() == "w1:ping"
    test = agent.cli("policy", "test", "--from", "client", "--to", "w1", "--port", "7")
    assert test.returncode == 0 and rule in test.stdout
    # Through the VIP too: policy sees the backend after DNAT.
    assert spread() == {"w1", "w2"}

    bad = agent.cli("policy", "allow", "--network", "vnet", "--from", "nobody", "--to", "w1")
    assert bad.returncode == 2 and "unknown selector" in bad.stderr
    assert agent.ok("policy", "ls", "-q").split() == [rule]
    agent.ok("policy", "rm", rule)
    assert agent.cli("exec", "client", "--", "python3", "-S", client, "tcp", "7", w1).returncode
