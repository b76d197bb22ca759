"""DNS through agent restarts: a container resolving a peer by name (glibc,
as any program would) keeps getting answers while the agent is stopped,
killed with -9 and started again (names of its network, and names outside
cove through the agent's upstream); names added after a restart resolve; the
listeners neither multiply nor outlive their network. The host's own
listener (127.0.0.1, the agent's DNS port) answers throughout as well."""

from __future__ import annotations

import os
import subprocess
import time
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    address,
    eventually,
    need_containers,
    runtime_cleanup_fixture,
)

from cove.dns.testing import StubUpstream

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("runtime_cleanup")]

# Resolves each NAME in turn until STOPFILE exists, one line per attempt: the
# wall time it started, how long it took, the name and the address (or the
# error).
#
# A query the agent had already read when it was killed (a forward waiting
# for the upstream, say) is lost with the process: only the client's retry
# recovers it, and glibc's default retry (5 s) outlasts the window the test
# looks at. The probe retries after 1 s, as a client that cares would
# (RES_OPTIONS), so the window shows whether the standby answers.
PROBE = """\
import os, socket, sys, time
os.environ["RES_OPTIONS"] = "timeout:1 attempts:5"
stopfile, names = sys.argv[1], sys.argv[2:]
while not os.path.exists(stopfile):
    for name in names:
        t = time.time()
        try:
            addr = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0]
            print("ok", t, time.time() - t, name, addr, flush=True)
        except OSError as exc:
            print("fail", t, time.time() - t, name, repr(exc), flush=True)
    time.sleep(0.02)
print("done", flush=True)
"""
# The agent's upstream in tests (see agentproc): a stub in the test's own
# namespace answers for a name outside cove.
UPSTREAM_PORT = 5399
OUTSIDE = "www.example.org"
OUTSIDE_ADDR = "192.0.2.80"


@pytest.fixture
def net(agent: Any) -> Any:
    need_containers(agent)
    agent.ok("network", "create", "vnet", "--subnet", "10.89.0.0/24")
    return agent


def _dns_sockets(port: int = 53) -> list[str]:
    """Local addresses of every UDP and TCP socket on ``port`` in this
    thread's network namespace (hex, as the kernel lists them)."""
    found: list[str] = []
    for table in ("udp", "tcp"):
        with open(f"/proc/thread-self/net/{table}") as f:
            for line in f.readlines()[1:]:
                local = line.split()[1]
                if int(local.split(":")[1], 16) == port:
                    found.append(f"{table} {local}")
    return sorted(found)


def _dig(agent: Any, name: str) -> list[str]:
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(agent.dns_port), "+short", "+tries=1", "+time=2", name],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return out.stdout.split()


def _socket_fds(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


def _probe_lines(agent: Any) -> list[list[str]]:
    return [line.split() for line in agent.ok("logs", "probe").splitlines() if line.strip()]


def test_a_container_resolves_names_throughout_agent_stop_and_kill9(
    net: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    probe, stopfile = tmp_path / "probe.py", tmp_path / "probe.stop"
    probe.write_text(PROBE)
    upstream = StubUpstream(records={OUTSIDE: [ip_address(OUTSIDE_ADDR)]}, port=UPSTREAM_PORT)
    request.addfinalizer(upstream.close)
    net.ok("run", "-d", "--name", "redis", "--network", "vnet", "--", "sleep", "600")
    redis = address(net, "redis", "vnet")
    net.ok("run", "-d", "--name", "probe", "--network", "vnet", "--",
           "python3", "-S", "-u", str(probe), str(stopfile), "redis", OUTSIDE)  # fmt: skip
    eventually(lambda: sum(1 for w in _probe_lines(net) if w[0] == "ok") >= 5)
    supervisor = int((net.state_dir / "run" / "supervisor.pid").read_text())
    listeners = _dns_sockets()
    assert len(listeners) == 2  # the gateway's UDP and TCP
    sockets = _socket_fds(supervisor)

    down: list[tuple[float, float]] = []
    host: list[list[str]] = []
    for stop in (net.stop, net.kill9, net.stop, net.kill9):
        t0 = time.time()
        stop()
        time.sleep(0.5)
        host.append(_dig(net, "redis.vnet.cove"))  # the host's listener stays too
        time.sleep(1.0)  # no agent at all for a while
        down.append((t0, time.time()))
        net.start()
        time.sleep(0.5)
    stopfile.write_text("")
    lines = eventually(lambda: (ls := _probe_lines(net)) and ls[-1] == ["done"] and ls, timeout=30)

    assert host == [[redis]] * 4
    failures = [" ".join(w) for w in lines if w[0] == "fail"]
    assert failures == [], failures[:5]
    answers = [(float(w[1]), w[3], w[4]) for w in lines if w[0] == "ok"]
    assert {(n, a) for _, n, a in answers} == {("redis", redis), (OUTSIDE, OUTSIDE_ADDR)}
    for t0, t1 in down:
        # answered while the agent was gone, not merely queued until it came back
        for name in ("redis", OUTSIDE):
            # on failure: the lookups in flight across the window's start
            oks = (w for w in lines if w[0] == "ok")
            held = [w[1:4] for w in oks if float(w[1]) < t0 + 0.2 < float(w[1]) + float(w[2])]
            assert any(t0 + 0.2 < t < t1 and n == name for t, n, _ in answers), (name, t0, t1, held)

    # a name added after the restarts resolves, from the container and the host
    net.ok("run", "-d", "--name", "late", "--network", "vnet", "--", "sleep", "600")
    late = address(net, "late", "vnet")
    got = eventually(lambda: net.ok("exec", "redis", "--", "getent", "hosts", "late").split()[:1])
    assert got == [late]

    # the same listeners, held by the same supervisor, with no socket left over
    assert int((net.state_dir / "run" / "supervisor.pid").read_text()) == supervisor
    assert _dns_sockets() == listeners
    assert eventually(lambda: _socket_fds(supervisor) == sockets)
    net.ok("rm", "-f", "probe", "redis", "late")
    net.ok("network", "rm", "vnet")
    assert eventually(lambda: _dns_sockets() == [])
