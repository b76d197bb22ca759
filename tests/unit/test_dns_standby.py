"""DNS while the agent is away, without root: the stand-in answers from the
agent's snapshot, and the supervisor's keeper hands the very same listening
sockets back and forth over SCM_RIGHTS, answering only while no agent is
connected."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import selectors
import socket
import threading
import time
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from cove.clock import ManualClock
from cove.dns.answer import AnswerConfig
from cove.dns.standby import Standby, encode_snapshot, write_atomically
from cove.dns.testing import StubMode, StubUpstream, put_endpoint, put_network
from cove.dns.view import DnsView
from cove.runtime.dns_handover import SupervisorKeeper
from cove.runtime.dns_keeper import SNAPSHOT, Channel, DnsKeeper, adopt
from cove.runtime.supervisor import DNS_KEEP_OP, SOCKET
from cove.store.memory import MemoryStore


def _snapshot() -> bytes:
    store = MemoryStore(ManualClock())
    put_network(store, "vnet", "10.89.0.0/24")
    put_network(store, "sealed", "10.91.0.0/24", internal=True)
    put_endpoint(store, "vnet", "redis", "10.89.0.3", aliases=["cache"])
    put_endpoint(store, "vnet", "web", "10.89.0.4", services=["web:8080"])
    put_endpoint(store, "sealed", "vault", "10.91.0.2")
    view = DnsView()
    view.load(store.range("").kvs)
    return encode_snapshot(view, AnswerConfig(), max_udp=1232, a_limit=0)


def _ask(
    standby: Standby, name: str, net: str | None, src: str, rdtype: str = "A"
) -> dns.message.Message:
    out = standby.answer(dns.message.make_query(name, rdtype).to_wire(), net, src, tcp=False)
    assert out is not None
    return dns.message.from_wire(out)


def _addrs(msg: dns.message.Message) -> list[str]:
    return sorted(r.to_text() for rrset in msg.answer for r in rrset)


def _listener_pair(backlog: int) -> tuple[socket.socket, socket.socket, int]:
    """A UDP and a TCP socket on one free loopback port. Another test (or a
    parallel worker) may take the TCP port between the two binds: try again."""
    for _ in range(100):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(("127.0.0.1", port))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(backlog)
        return udp, tcp, port
    raise AssertionError("no loopback port free for both UDP and TCP")


def _agent_hands_over_and_goes(
    loop: _Loop, udp: socket.socket, tcp: socket.socket, port: int
) -> None:
    """An agent gives the keeper its listeners on ``port`` and is gone."""
    ch, _ = loop.connect_agent()
    ch.send({"op": "keep", "address": "127.0.0.1", "port": port, "network": None},
            [udp.fileno(), tcp.fileno()])  # fmt: skip
    loop.spin()
    ch.close()
    loop.spin()


def test_standby_answers_names_with_the_agents_scoping() -> None:
    standby = Standby(_snapshot())
    assert _addrs(_ask(standby, "redis", "vnet", "10.89.0.4")) == ["10.89.0.3"]
    assert _addrs(_ask(standby, "cache.vnet", "vnet", "10.89.0.4")) == ["10.89.0.3"]
    assert _addrs(_ask(standby, "redis.vnet.cove", None, "127.0.0.1")) == ["10.89.0.3"]
    ptr = _ask(standby, "3.0.89.10.in-addr.arpa", "vnet", "10.89.0.4", "PTR")
    assert _addrs(ptr) == ["redis.vnet."]
    # another network's container is not visible, and strangers are refused
    assert _ask(standby, "vault", "vnet", "10.89.0.4").rcode() != dns.rcode.NOERROR
    assert _ask(standby, "redis", "vnet", "192.0.2.9").rcode() == dns.rcode.REFUSED
    assert _ask(standby, "nothere.vnet.cove", None, "127.0.0.1").rcode() == dns.rcode.NXDOMAIN


def test_standby_says_servfail_for_what_only_the_agent_knows() -> None:
    standby = Standby(_snapshot())
    # service health lives in the registry; names outside go upstream: a
    # client retries a SERVFAIL, where it would cache an NXDOMAIN
    assert _ask(standby, "web.service.cove", None, "127.0.0.1").rcode() == dns.rcode.SERVFAIL
    assert _ask(standby, "example.org", "vnet", "10.89.0.4").rcode() == dns.rcode.SERVFAIL
    # an internal network never forwards: REFUSED as the agent would say
    assert _ask(standby, "example.org", "sealed", "10.91.0.2").rcode() == dns.rcode.REFUSED


def test_standby_refuses_a_snapshot_of_another_version() -> None:
    with pytest.raises(ValueError):
        Standby(b'{"version": 99}')


def test_channel_passes_descriptors_matched_to_their_messages() -> None:
    a, b = socket.socketpair()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    try:
        Channel(a).send({"op": "one"})
        Channel(a).send({"op": "two"}, [udp.fileno(), udp.fileno()])
        got: list[tuple[dict[str, object], list[int]]] = []
        rx = Channel(b)
        while len(got) < 2:
            msgs = rx.receive()
            assert msgs is not None
            got += msgs
        assert [(m["op"], len(f)) for m, f in got] == [("one", 0), ("two", 2)]
        copies = [adopt(fd) for fd in got[1][1]]
        assert [c.getsockname() for c in copies] == [udp.getsockname()] * 2
        for c in copies:
            c.close()
    finally:
        udp.close()
        a.close()
        b.close()


class _Loop:
    """The supervisor's selector loop, reduced to the keeper."""

    def __init__(self, root: Path) -> None:
        self.sel = selectors.DefaultSelector()
        self.keeper = DnsKeeper(self.sel, root)

    def spin(self, seconds: float = 0.05) -> None:
        for key, _ in self.sel.select(seconds):
            self.keeper.on_event(*key.data)

    def connect_agent(self) -> tuple[Channel, dict[tuple[str, int], list[socket.socket]]]:
        agent, supervisor_side = socket.socketpair()
        agent.settimeout(2)
        self.keeper.attach(supervisor_side)
        ch = Channel(agent)
        held: dict[tuple[str, int], list[socket.socket]] = {}
        while True:
            msgs = ch.receive()
            assert msgs is not None
            for msg, fds in msgs:
                if msg["op"] == "ready":
                    return ch, held
                held[(str(msg["address"]), int(msg["port"]))] = [adopt(fd) for fd in fds]


def _query(client: socket.socket, port: int, name: str) -> None:
    client.sendto(dns.message.make_query(name, "A").to_wire(), ("127.0.0.1", port))


def _answer(client: socket.socket, loop: _Loop, wait: float = 0.5) -> dns.message.Message | None:
    client.setblocking(False)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        loop.spin()
        try:
            return dns.message.from_wire(client.recv(4096))
        except BlockingIOError:
            continue
    return None


def test_keeper_answers_only_while_no_agent_is_connected(tmp_path: Path) -> None:
    write_atomically(tmp_path / SNAPSHOT, _snapshot())
    loop = _Loop(tmp_path)
    udp, tcp, port = _listener_pair(8)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    try:
        ch, held = loop.connect_agent()
        assert held == {}
        ch.send({"op": "keep", "address": "127.0.0.1", "port": port, "network": None},
                [udp.fileno(), tcp.fileno()])  # fmt: skip
        loop.spin()
        # the agent is connected: the query waits for the agent
        _query(client, port, "redis.vnet.cove")
        assert _answer(client, loop, 0.3) is None
        assert udp.recv(4096)  # still queued for the agent, who reads it here

        # the agent goes (here: its end closes; kill -9 closes it as well)
        ch.close()
        udp.close()
        tcp.close()
        _query(client, port, "redis.vnet.cove")
        msg = _answer(client, loop)
        assert msg is not None and _addrs(msg) == ["10.89.0.3"]

        # a new agent gets the same sockets back, and the keeper stands down
        # once it serves
        ch2, held2 = loop.connect_agent()
        assert list(held2) == [("127.0.0.1", port)]
        assert [s.getsockname()[1] for s in held2[("127.0.0.1", port)]] == [port, port]
        _query(client, port, "redis.vnet.cove")
        msg = _answer(client, loop)
        assert msg is not None and _addrs(msg) == ["10.89.0.3"]  # until it serves
        ch2.send({"op": "serving"})
        loop.spin()
        _query(client, port, "redis.vnet.cove")
        assert _answer(client, loop, 0.3) is None

        # dropped for good: the keeper lets the socket go
        ch2.send({"op": "drop", "address": "127.0.0.1", "port": port})
        loop.spin()
        assert loop.keeper.held == {}
        ch2.close()
        loop.spin()
        assert not loop.keeper.answering
        for s in held2[("127.0.0.1", port)]:
            s.close()
    finally:
        client.close()
        udp.close()
        tcp.close()


class _FakeSupervisor:
    """The supervisor's socket and loop, reduced to the DNS keeper, on a
    thread of the test."""

    def __init__(self, root: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(root / SOCKET))
        self.listener.listen(8)
        self.loop = _Loop(root)
        self.loop.sel.register(self.listener, selectors.EVENT_READ, ("listen", None))
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            for key, _ in self.loop.sel.select(0.05):
                if key.data[0] == "listen":
                    conn, _ = self.listener.accept()
                    conn.settimeout(2)
                    line = b""
                    while not line.endswith(b"\n"):
                        line += conn.recv(1)
                    assert json.loads(line)["op"] == DNS_KEEP_OP
                    self.loop.keeper.attach(conn)
                else:
                    self.loop.keeper.on_event(*key.data)

    def crash(self) -> None:
        self.running = False
        self.thread.join()
        self.loop.keeper._detach()
        for h in self.loop.keeper.held.values():
            h.udp.close()
            h.tcp.close()
        self.listener.close()
        (self.loop.keeper.root / SOCKET).unlink()


def test_the_agent_hands_its_listeners_to_a_supervisor_that_restarted(tmp_path: Path) -> None:
    first = _FakeSupervisor(tmp_path)
    keeper = SupervisorKeeper(tmp_path, retry=0.05)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", port))
    second: _FakeSupervisor | None = None
    try:
        assert keeper.open()
        keeper.keep(ipaddress.ip_address("127.0.0.1"), port, None, udp, tcp)
        keeper.serving()
        deadline = time.monotonic() + 5
        while not first.loop.keeper.held and time.monotonic() < deadline:
            time.sleep(0.02)
        assert list(first.loop.keeper.held) == [("127.0.0.1", port)]
        first.crash()
        second = _FakeSupervisor(tmp_path)
        deadline = time.monotonic() + 5
        while not second.loop.keeper.held and time.monotonic() < deadline:
            time.sleep(0.02)
        held = second.loop.keeper.held
        assert list(held) == [("127.0.0.1", port)]
        assert held[("127.0.0.1", port)].udp.getsockname() == ("127.0.0.1", port)
        assert not second.loop.keeper.answering  # the agent said it serves
    finally:
        keeper.release()
        if second is not None:
            second.crash()
        udp.close()
        tcp.close()


def test_keeper_forwards_what_the_agent_would_forward(tmp_path: Path) -> None:
    upstream = StubUpstream(records={"www.example.org": [ipaddress.ip_address("192.0.2.80")]})
    store = MemoryStore(ManualClock())
    put_network(store, "vnet", "10.89.0.0/24")
    view = DnsView()
    view.load(store.range("").kvs)
    snapshot = encode_snapshot(
        view, AnswerConfig(), max_udp=1232, a_limit=0, upstreams=[("127.0.0.1", upstream.port)]
    )
    write_atomically(tmp_path / SNAPSHOT, snapshot)
    loop = _Loop(tmp_path)
    udp, tcp, port = _listener_pair(8)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    try:
        _agent_hands_over_and_goes(loop, udp, tcp, port)
        _query(client, port, "WWW.example.org")
        msg = _answer(client, loop)
        assert msg is not None and _addrs(msg) == ["192.0.2.80"]
        assert msg.question[0].name.to_text() == "WWW.example.org."  # as the client spelt it
        assert upstream.queries == 1

        # an upstream that never answers: SERVFAIL after a second, not silence
        upstream.mode = StubMode.SILENT
        _query(client, port, "www.example.org")
        assert _answer(client, loop, 0.3) is None
        time.sleep(1.0)
        loop.keeper.tick()
        msg = _answer(client, loop)
        assert msg is not None and msg.rcode() == dns.rcode.SERVFAIL
        assert loop.keeper.forwards == {}
    finally:
        upstream.close()
        client.close()
        udp.close()
        tcp.close()


def test_keeper_answers_tcp_and_lets_idle_connections_go(tmp_path: Path) -> None:
    write_atomically(tmp_path / SNAPSHOT, _snapshot())
    loop = _Loop(tmp_path)
    udp, tcp, port = _listener_pair(8)
    clients: list[socket.socket] = []
    try:
        _agent_hands_over_and_goes(loop, udp, tcp, port)
        asker, idle = (socket.create_connection(("127.0.0.1", port)) for _ in range(2))
        clients += [asker, idle]
        query = dns.message.make_query("redis.vnet.cove", "A").to_wire()
        asker.sendall(len(query).to_bytes(2, "big") + query)
        asker.setblocking(False)
        got = b""
        deadline = time.monotonic() + 2
        while len(got) < 2 or len(got) < 2 + int.from_bytes(got[:2], "big"):
            assert time.monotonic() < deadline
            loop.spin()
            with contextlib.suppress(BlockingIOError):
                got += asker.recv(4096)
        assert _addrs(dns.message.from_wire(got[2:])) == ["10.89.0.3"]

        # a client that sends nothing is let go, the one that asks is not yet
        for c in loop.keeper.conns.values():
            if c.sock.getpeername() == idle.getsockname():
                c.since -= 60  # as if a minute had passed
        loop.keeper.tick()
        idle.settimeout(2)
        assert idle.recv(1) == b""
        assert len(loop.keeper.conns) == 1
    finally:
        for c in clients:
            c.close()
        udp.close()
        tcp.close()


def test_standing_in_one_clients_slow_connections_use_its_own_share(tmp_path: Path) -> None:
    write_atomically(tmp_path / SNAPSHOT, _snapshot())
    loop = _Loop(tmp_path)
    udp, tcp, port = _listener_pair(128)
    clients: list[socket.socket] = []
    try:
        _agent_hands_over_and_goes(loop, udp, tcp, port)
        # One client opens 80 connections (more than the stand-in's old
        # single cap of 64) and sends one byte on each.
        for _ in range(80):
            hog = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            hog.bind(("127.0.0.9", 0))
            hog.connect(("127.0.0.1", port))
            hog.send(b"\x00")
            clients.append(hog)
            loop.spin(0)
        for _ in range(20):
            loop.spin(0.01)
        assert len(loop.keeper.conns) == 8  # its share; the rest were closed
        asker = socket.create_connection(("127.0.0.1", port))
        clients.append(asker)
        query = dns.message.make_query("redis.vnet.cove", "A").to_wire()
        asker.sendall(len(query).to_bytes(2, "big") + query)
        asker.setblocking(False)
        got = b""
        deadline = time.monotonic() + 2
        while len(got) < 2 or len(got) < 2 + int.from_bytes(got[:2], "big"):
            assert time.monotonic() < deadline, "another client got no TCP answer"
            loop.spin()
            with contextlib.suppress(BlockingIOError):
                got += asker.recv(4096)
        assert _addrs(dns.message.from_wire(got[2:])) == ["10.89.0.3"]
        for c in clients:
            c.close()
        clients.clear()
        for _ in range(20):
            loop.spin(0.01)
        assert loop.keeper.slots.held == 0  # every share given back
    finally:
        for c in clients:
            c.close()
        udp.close()
        tcp.close()
