"""More of Docker's daily flags, through a real agent in a host namespace of
its own: --dns and friends, logs with timestamps, memory and CPU limits."""

from __future__ import annotations

from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    inspect,
    need_containers,
    runtime_cleanup_fixture,
)

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]


@pytest.fixture
def net(agent: Any) -> Any:
    need_containers(agent)
    agent.ok("network", "create", "uxmore", "--subnet", "10.91.0.0/24")
    return agent


def _resolv(agent: Any, *flags: str) -> str:
    out = agent.ok("run", "--network", "uxmore", *flags, "--", "cat", "/etc/resolv.conf")
    return str(out)


def test_dns_flags_replace_the_servers_search_and_options(net: Any) -> None:
    default = _resolv(net)
    assert "nameserver 10.91.0.1" in default, default

    got = _resolv(
        net, "--dns", "192.0.2.53", "--dns", "2001:db8::53", "--dns-search", "corp.example",
        "--dns-search", "example.org", "--dns-option", "ndots:2", "--dns-option", "edns0",
    )  # fmt: skip
    assert got.splitlines() == [
        "nameserver 192.0.2.53",
        "nameserver 2001:db8::53",
        "search corp.example example.org",
        "options ndots:2 edns0",
    ], got
    # --dns-search alone keeps cove's DNS as the server
    only_search = _resolv(net, "--dns-search", "corp.example").splitlines()
    assert only_search[0] == "nameserver 10.91.0.1", only_search
    assert "search corp.example" in only_search


def test_dns_flags_are_kept_and_bad_ones_refused(net: Any) -> None:
    net.ok("run", "-d", "--name", "dnsd", "--network", "uxmore", "--dns", "192.0.2.9",
           "--", "sleep", "600")  # fmt: skip
    body = inspect(net, "dnsd")
    assert body["dns"] == ["192.0.2.9"]
    # The agent rewrites resolv.conf as the network changes; --dns stays.
    net.ok("stop", "-t", "1", "dnsd")
    net.ok("start", "dnsd")
    got = net.ok("exec", "dnsd", "--", "cat", "/etc/resolv.conf")
    assert got.splitlines()[0] == "nameserver 192.0.2.9", got

    before = net.ok("ps", "-a", "-q").split()
    for flag, value, word in [
        ("--dns", "not-an-ip", "--dns"),
        ("--dns-search", "bad domain", "--dns-search"),
        ("--dns-option", "ndots:2 rotate", "--dns-option"),
    ]:
        r = net.cli("run", "--network", "uxmore", flag, value, "--", "true")
        assert r.returncode != 0
        assert word in r.stderr and repr(value) in r.stderr, r.stderr
    assert net.ok("ps", "-a", "-q").split() == before, "nothing half-made"
