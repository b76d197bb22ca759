"""The agent under HTTP exhaustion (issue 17): a flood of TCP connections
under a low open-file limit, pipelined large bodies and a thousand parked
blocking queries must not take the CLI, DNS or the agent's memory with them.

Each agent here starts under ``prlimit`` with a low hard open-file limit
(1024: systemd's default soft limit), so it cannot raise its way out and
its caps are sized from it.
"""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_containers_helpers import (  # noqa: F401 - fixtures
    need_containers,
    runtime_cleanup_fixture,
)

from agentproc import AgentProc
from conftest import cleanup_agent

pytestmark = [pytest.mark.root]

MIB = 1024 * 1024


def _start_limited(hostns: str, workdir: Path, nofile: int) -> AgentProc:
    proc = AgentProc(hostns, workdir)
    # Soft and hard: the agent raises its soft limit to the hard one.
    proc.start(prefix=("prlimit", f"--nofile={nofile}:{nofile}", "--"))
    return proc


@pytest.fixture
def fd_agent(hostns: str, tmp_path: Path) -> Iterator[AgentProc]:
    proc = _start_limited(hostns, tmp_path, 1024)
    try:
        yield proc
    finally:
        cleanup_agent(proc)


@pytest.fixture
def roomy_agent(hostns: str, tmp_path: Path) -> Iterator[AgentProc]:
    proc = _start_limited(hostns, tmp_path, 4096)
    try:
        yield proc
    finally:
        cleanup_agent(proc)


@pytest.fixture
def many_sockets() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    try:
        yield socks
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/PID/status")


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _open(
    socks: list[socket.socket],
    count: int,
    port: int,
    source: str = "127.0.0.1",
    *,
    wait: float = 15,
) -> None:
    """Open ``count`` connections without blocking on any one (a full
    accept queue must not stall the test), waiting at most ``wait`` seconds
    for all of them."""
    sel = selectors.DefaultSelector()
    pending = 0
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.bind((source, 0))
        socks.append(s)
        s.connect_ex(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_WRITE)
        pending += 1
    deadline = time.monotonic() + wait
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            sel.unregister(key.fileobj)
            pending -= 1
    sel.close()


def _read_all(socks: list[socket.socket], wait: float) -> dict[socket.socket, bytes]:
    """What each socket has received within ``wait`` seconds (until it closed
    or the time ran out)."""
    got: dict[socket.socket, bytes] = {s: b"" for s in socks}
    sel = selectors.DefaultSelector()
    for s in socks:
        with contextlib.suppress(ValueError, OSError):
            sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + wait
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            got[s] += data
            if not data:
                sel.unregister(s)
    sel.close()
    return got


def _dig_tcp(agent: AgentProc, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(agent.dns_port), "+tcp", "+tries=1", "+time=3", name],
        capture_output=True,
        text=True,
        timeout=20,
    )


@pytest.mark.usefixtures("runtime_cleanup")
def test_a_connection_flood_leaves_the_cli_and_dns_working(
    fd_agent: AgentProc, many_sockets: list[socket.socket]
) -> None:
    agent = fd_agent
    need_containers(agent)
    assert agent.proc is not None
    pid = agent.proc.pid
    agent.ok("network", "create", "vnet", "--subnet", "10.89.0.0/24")
    # In batches, so the listener's accept queue never overflows (the
    # kernel would drop the handshakes the agent never sees).
    for _ in range(11):
        _open(many_sockets, 100, agent.http_port)
        time.sleep(0.3)
    time.sleep(1)  # let the agent accept what it will
    print(f"under 1,100 connections: {_fds(pid)} fds, RSS {_rss_mb(pid):.0f} MB")

    # The administrator and the containers' and host's DNS are not locked out.
    res = agent.cli("network", "ls", timeout=30)
    assert res.returncode == 0, res.stderr
    assert "vnet" in res.stdout
    res = agent.cli(
        "run", "-d", "--name", "small", "--network", "vnet", "--", "sleep", "600", timeout=60
    )
    assert res.returncode == 0, res.stderr
    dig = _dig_tcp(agent, "small.vnet.cove")
    assert "status: NOERROR" in dig.stdout, dig.stdout + dig.stderr
    assert "10.89.0." in dig.stdout

    # The connections beyond the cap were told to come back later.
    got = _read_all(many_sockets, wait=3)
    refused = [data for data in got.values() if data.startswith(b"HTTP/1.1 503")]
    assert len(refused) >= 1100 - 600, f"only {len(refused)} connections answered 503"
    assert all(b"\r\nretry-after: " in data.lower() for data in refused)
    # Those within the cap are served.
    admitted = [s for s, data in got.items() if not data]
    assert admitted, "no connection was admitted"
    s = admitted[0]
    s.setblocking(True)
    s.settimeout(10)
    s.sendall(b"GET /v1/status/leader HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert s.recv(65536).startswith(b"HTTP/1.1 200")
    for s in many_sockets:
        s.close()
    many_sockets.clear()
    deadline = time.monotonic() + 10
    while _fds(pid) > 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    print(f"after they closed: {_fds(pid)} fds")


def _index(agent: AgentProc, key: str) -> str:
    """The X-Consul-Index a read of ``key`` answers with now."""
    with socket.create_connection(("127.0.0.1", agent.http_port), timeout=10) as probe:
        probe.sendall(f"GET /v1/kv/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = probe.recv(65536).decode("latin-1").lower()
    return head.split("x-consul-index: ")[1].split("\r\n")[0]


def _pipeline(s: socket.socket, index: str, body: int, count: int) -> None:
    """A blocking query, then ``count`` PUTs of ``body`` bytes pipelined
    behind it: the server reads them while the query waits."""
    head = f"PUT /v1/kv/big HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {body}\r\n\r\n"
    payload = b"x" * body
    with contextlib.suppress(OSError):  # the test shuts the socket down when it is done
        s.sendall(
            f"GET /v1/kv/big?index={index}&wait=30s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        )
        for _ in range(count):
            s.sendall(head.encode())
            s.sendall(payload)


def test_pipelined_large_bodies_keep_memory_bounded(roomy_agent: AgentProc) -> None:
    agent = roomy_agent
    assert agent.proc is not None
    pid = agent.proc.pid
    index = _index(agent, "big")
    time.sleep(1)
    baseline = _rss_mb(pid)
    socks = [socket.create_connection(("127.0.0.1", agent.http_port), timeout=30) for _ in range(3)]
    threads = [
        threading.Thread(target=_pipeline, args=(s, index, 8 * MIB, 20), daemon=True) for s in socks
    ]
    peak = baseline
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            peak = max(peak, _rss_mb(pid))
            time.sleep(0.05)
        print(f"baseline {baseline:.0f} MB, peak {peak:.0f} MB, {_fds(pid)} fds")
    finally:
        for s in socks:
            # Reset, not FIN: a FIN would wait behind the unsent bodies. The
            # shutdown wakes a sender blocked on the socket, which would
            # otherwise keep it open past close().
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_WR)
        for t in threads:
            t.join(10)
        for s in socks:
            s.close()
    assert peak < 150, f"RSS reached {peak:.0f} MB (baseline {baseline:.0f} MB)"
    time.sleep(3)
    after = _rss_mb(pid)
    print(f"after the connections closed: {after:.0f} MB, {_fds(pid)} fds")
    assert after < baseline + 15, f"RSS {after:.0f} MB after close (baseline {baseline:.0f} MB)"


def _park(socks: list[socket.socket], index: str) -> None:
    request = (f"GET /v1/kv/x?index={index}&wait=10m HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").encode()
    for s in socks:
        s.setblocking(True)
        s.sendall(request)
        s.setblocking(False)


def test_parked_blocking_queries_end_early_when_connections_run_short(
    roomy_agent: AgentProc, many_sockets: list[socket.socket]
) -> None:
    agent = roomy_agent
    assert agent.proc is not None
    pid = agent.proc.pid
    status, _ = agent.api("PUT", "/v1/kv/x", "v1")
    assert status == 200
    status, _ = agent.api("GET", "/v1/kv/x")
    assert status == 200
    index = _index(agent, "x")

    # 1,000 blocking queries, 200 from each of five client addresses (at
    # the per-client cap), parked for up to ten minutes.
    sources = [f"127.0.0.{i}" for i in range(2, 7)]
    groups: list[list[socket.socket]] = []
    for source in sources:
        group: list[socket.socket] = []
        _open(group, 200, agent.http_port, source)
        many_sockets.extend(group)
        _park(group, index)
        groups.append(group)
    time.sleep(2)
    early = _read_all(many_sockets, wait=1)
    assert not any(early.values()), "a blocking query answered before any change"
    print(f"1,000 parked queries: {_fds(pid)} fds, RSS {_rss_mb(pid):.0f} MB")

    # One more connection from each address: beyond its cap. The agent
    # answers the parked queries now, with the current index.
    extra: list[socket.socket] = []
    for source in sources:
        _open(extra, 1, agent.http_port, source)
    many_sockets.extend(extra)
    got = _read_all(many_sockets, wait=15)
    parked = [got[s] for group in groups for s in group]
    answered = [data for data in parked if data.startswith(b"HTTP/1.1 200")]
    assert len(answered) == 1000, f"{len(answered)} of 1,000 parked queries ended early"
    assert all(f"\r\nx-consul-index: {index}\r\n".encode() in d.lower() for d in answered)
    # Their connections were handed back: a new client is served.
    deadline = time.monotonic() + 10
    while _fds(pid) > 300 and time.monotonic() < deadline:
        time.sleep(0.2)
    status, _ = agent.api("GET", "/v1/kv/x?raw")
    print(f"after: {_fds(pid)} fds")
    assert status == 200
