"""DNS end to end through a real `cove agent`: containers find each other by
name (glibc inside the container), the host finds them on the agent's DNS
port, and names follow `cove run` / `cove rm`.

"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    address,
    need_containers,
    runtime_cleanup_fixture,
)

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]


def _dig(agent: Any, *args: str) -> list[str]:
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(agent.dns_port), "+short", "+tries=1", "+time=2", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return sorted(out.stdout.split())


@pytest.fixture
def net(agent: Any) -> Any:
    need_containers(agent)
    agent.ok("network", "create", "vnet", "--subnet", "10.89.0.0/24")
    return agent


def _getent(agent: Any, container: str, name: str) -> list[str]:
    res = agent.cli("exec", container, "--", "getent", "hosts", name)
    return res.stdout.split()[:1]


def test_web_finds_redis_by_name_and_the_host_finds_both(net: Any) -> None:
    net.ok("run", "-d", "--name", "redis", "--network", "vnet", "--", "sleep", "600")
    net.ok(
        "run", "-d", "--name", "web", "--network", "vnet", "--alias", "www",
        "--service", "web:8080", "--", "python3", "-m", "http.server", "8080",
    )  # fmt: skip
    redis = address(net, "redis", "vnet")
    web = address(net, "web", "vnet")
    assert _getent(net, "web", "redis") == [redis]
    assert _getent(net, "redis", "www") == [web]
    assert _getent(net, "redis", "web.vnet") == [web]
    assert _dig(net, "redis.vnet.cove") == [redis]
    assert _dig(net, "-x", redis) == ["redis.vnet.cove."]
    # The instance is registered with a TCP check; once it passes, SRV has it.
    start = time.monotonic()
    while "8080" not in _dig(net, "_web._tcp.service.cove", "SRV"):
        assert time.monotonic() - start < 15, "web never became a passing service"
        time.sleep(0.2)
    assert _dig(net, "web.service.cove") == [web]
    net.ok("stop", "web")
    start = time.monotonic()
    while _dig(net, "web.service.cove") != []:
        assert time.monotonic() - start < 15, "a stopped web still answers"
        time.sleep(0.2)


def test_names_follow_run_and_rm(net: Any) -> None:
    net.ok("run", "-d", "--name", "web", "--network", "vnet", "--", "sleep", "600")
    assert _dig(net, "late.vnet.cove") == []
    net.ok("run", "-d", "--name", "late", "--network", "vnet", "--", "sleep", "600")
    late = address(net, "late", "vnet")
    start = time.monotonic()
    while _dig(net, "late.vnet.cove") != [late]:
        assert time.monotonic() - start < 5, "late never resolved"
    assert _getent(net, "web", "late") == [late]
    net.ok("rm", "-f", "late")
    start = time.monotonic()
    while _dig(net, "late.vnet.cove") != []:
        assert time.monotonic() - start < 5, "late still resolves"
