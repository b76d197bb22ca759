"""More of Docker's daily flags, through a real agent in a host namespace of
its own: --dns and friends, logs with timestamps, memory and CPU limits."""

from __future__ import annotations

from pathlib import Path
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


def _cgroup(kind: str, cid: str) -> Path:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return Path("/sys/fs/cgroup/cove") / cid
    return Path("/sys/fs/cgroup") / kind / "cove" / cid


def _read(kind: str, cid: str, v1: str, v2: str) -> str:
    group = _cgroup(kind, cid)
    name = v2 if group.parent.parent == Path("/sys/fs/cgroup") else v1
    return (group / name).read_text().strip()


def test_memory_and_cpus_limits_are_in_the_container_cgroup(net: Any) -> None:
    cid = net.ok("run", "-d", "--name", "lim", "--network", "uxmore", "-m", "64m",
                 "--cpus", "0.5", "--", "sleep", "600").strip()  # fmt: skip
    mem = _read("memory", cid, "memory.limit_in_bytes", "memory.max")
    assert int(mem) == 64 * 1024 * 1024
    if _cgroup("cpu", cid).parent.parent == Path("/sys/fs/cgroup"):
        assert _read("cpu", cid, "", "cpu.max") == "50000 100000"
    else:
        assert _read("cpu", cid, "cpu.cfs_quota_us", "") == "50000"
        assert _read("cpu", cid, "cpu.cfs_period_us", "") == "100000"
    # the container's own process is in it
    pid = inspect(net, "lim")["state"]["pid"]
    assert f"/cove/{cid}" in Path(f"/proc/{pid}/cgroup").read_text()
    body = inspect(net, "lim")
    assert body["memory"] == 64 * 1024 * 1024 and body["cpus"] == 0.5
    net.ok("rm", "-f", "lim")
    assert not _cgroup("memory", cid).exists() and not _cgroup("cpu", cid).exists()


def test_a_container_over_its_memory_limit_is_oom_killed(net: Any) -> None:
    hog = "b = bytearray(200 * 1024 * 1024); print('survived', flush=True)"
    r = net.cli("run", "--name", "hog", "--network", "uxmore", "-m", "32m",
                "--", "python3", "-c", hog)  # fmt: skip
    assert r.returncode == 137, (r.returncode, r.stdout, r.stderr)
    assert "survived" not in r.stdout
    assert inspect(net, "hog")["state"]["exit_code"] == 137
    # without a limit the same program runs to its end
    ok = net.ok("run", "--network", "uxmore", "--", "python3", "-c", hog)
    assert "survived" in ok


def test_bad_limits_are_refused_by_name(net: Any) -> None:
    before = net.ok("ps", "-a", "-q").split()
    for flag, value, word in [
        ("-m", "lots", "--memory"),
        ("-m", "1k", "minimum"),
        ("--cpus", "0", "--cpus"),
        ("--cpus", "9999", "at most"),
    ]:
        r = net.cli("run", "--network", "uxmore", flag, value, "--", "true")
        assert r.returncode != 0
        assert word in r.stderr and repr(value) in r.stderr, r.stderr
    assert net.ok("ps", "-a", "-q").split() == before, "nothing half-made"
