"""The DNS server's UDP loop, batched (recvmmsg/sendmmsg) and not: bursts
from several clients, over IPv4 and IPv6, each get their own answers; the
slow path, forwarding, long queries, TCP and per-network source scoping
work the same both ways."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import dns.message
import dns.query
import dns.rcode
import pytest

from cove.clock import SystemClock
from cove.dns.answer import AnswerConfig
from cove.dns.cache import ResponseCache
from cove.dns.forward import Forwarder, Upstream
from cove.dns.responder import ForwardJob, Responder
from cove.dns.server import DnsServer
from cove.dns.services import EndpointServices
from cove.dns.testing import StubUpstream, put_endpoint, put_network
from cove.dns.view import DnsView
from cove.store.memory import MemoryStore

NAMES = 40


class _Flaky(Responder):
    """A responder with a bug: it raises on one name."""

    def answer(
        self, data: bytes, network: str | None, source: str, *, tcp: bool
    ) -> bytes | ForwardJob | None:
        if b"\x04boom" in data:
            raise RuntimeError("boom")
        return super().answer(data, network, source, tcp=tcp)


@dataclass
class Stack:
    server: DnsServer
    upstream: StubUpstream


@pytest.fixture(params=[True, False], ids=["batched", "one-by-one"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    store = MemoryStore(SystemClock())
    # The "container" network is on loopback so that the test's clients can
    # be its containers (each socket bound to an endpoint's address).
    put_network(store, "vnet", "127.0.5.0/24")
    put_endpoint(store, "vnet", "client", "127.0.5.9")
    for i in range(NAMES):
        put_endpoint(store, "vnet", f"h{i}", f"127.0.5.{100 + i}", ipv6=f"fd00:89::{i + 1:x}")
    view = DnsView()
    view.load(store.range("").kvs)
    store.close()
    responder = _Flaky(view, EndpointServices("local", ()), ResponseCache(), AnswerConfig(), seed=1)
    up = StubUpstream("127.0.0.1", {"outside.test": [ipaddress.ip_address("192.0.2.1")]})
    upstream = Upstream(up.address, up.port)
    forwarder = Forwarder(lambda: (upstream,), SystemClock(), timeout=0.5)
    server = DnsServer(responder, forwarder, workers=4, batch=request.param)
    with responder.view_lock:
        responder.rebuild_scopes({"vnet"})
    server.start()
    yield Stack(server, up)
    server.stop()
    up.close()


def _burst(
    family: int, host: str, port: int, names: list[str], *, clients: int = 3, src: str = ""
) -> dict[tuple[int, int], dns.message.Message]:
    """Send every name from each of ``clients`` sockets without waiting, then
    gather the answers (retrying the unanswered until a deadline): the
    server sees bursts from several senders and must not mix them up."""
    socks = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(clients)]
    queries: dict[tuple[int, int], dns.message.Message] = {}
    answers: dict[tuple[int, int], dns.message.Message] = {}
    try:
        for k, s in enumerate(socks):
            s.bind((src or host, 0))
            s.settimeout(0.05)
            for name in names:
                q = dns.message.make_query(name, "A" if family == socket.AF_INET else "AAAA")
                queries[(k, q.id)] = q
        deadline = time.monotonic() + 10
        while len(answers) < len(queries) and time.monotonic() < deadline:
            for (k, _), q in queries.items():
                if (k, q.id) not in answers:
                    socks[k].sendto(q.to_wire(), (host, port))
            for k, s in enumerate(socks):
                while True:
                    try:
                        data, addr = s.recvfrom(4096)
                    except TimeoutError:
                        break
                    assert addr[:2] == (host, port)
                    msg = dns.message.from_wire(data)
                    assert (k, msg.id) in queries, "an answer reached the wrong client"
                    assert msg.question == queries[(k, msg.id)].question
                    answers[(k, msg.id)] = msg
    finally:
        for s in socks:
            s.close()
    assert len(answers) == len(queries)
    return answers


def _texts(msg: dns.message.Message) -> list[str]:
    return sorted(r.to_text() for rrset in msg.answer for r in rrset)


FAMILIES = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]


@pytest.mark.parametrize(("family", "host"), FAMILIES)
def test_bursts_from_several_clients_get_their_own_answers(
    stack: Stack, family: int, host: str
) -> None:
    try:
        port = stack.server.add(ipaddress.ip_address(host), 0, None)
    except OSError:
        pytest.skip(f"cannot listen on {host}")
    names = [f"h{i}.vnet.cove" for i in range(NAMES)] + ["nobody.vnet.cove"]
    for _ in range(2):  # the second round is answered from the cache
        answers = _burst(family, host, port, names)
        by_name = {m.question[0].name.to_text(): m for m in answers.values()}
        for i in range(NAMES):
            want = f"127.0.5.{100 + i}" if family == socket.AF_INET else f"fd00:89::{i + 1:x}"
            assert _texts(by_name[f"h{i}.vnet.cove."]) == [want]
        assert by_name["nobody.vnet.cove."].rcode() == dns.rcode.NXDOMAIN
    assert stack.server.stats.udp_cached > 0


def test_forwarded_and_long_queries_and_tcp(stack: Stack) -> None:
    port = stack.server.add(ipaddress.ip_address("127.0.0.1"), 0, None)
    out = _burst(socket.AF_INET, "127.0.0.1", port, ["outside.test", "h1.vnet.cove"])
    assert (
        sorted(t for m in out.values() for t in _texts(m))
        == ["127.0.5.101"] * 3 + ["192.0.2.1"] * 3
    )
    assert stack.upstream.queries >= 1
    # EDNS padding makes a query longer than any plain one (past mmsg.HEAD).
    q = dns.message.make_query("h2.vnet.cove", "A", use_edns=0, pad=1024)
    assert len(q.to_wire()) > 1000
    for _ in range(2):
        assert _texts(dns.query.udp(q, "127.0.0.1", port=port, timeout=2)) == ["127.0.5.102"]
    tcp = dns.query.tcp(dns.message.make_query("h3.vnet.cove", "A"), "127.0.0.1", port=port)
    assert _texts(tcp) == ["127.0.5.103"]


def test_network_listener_scopes_by_source(stack: Stack) -> None:
    port = stack.server.add(ipaddress.ip_address("127.0.0.1"), 0, "vnet")
    names = ["h4.vnet.cove", "h4"]  # a container may ask the short name
    # A registered container (the hot path once cached), an unregistered
    # address inside the subnet (the slow path), and a stranger.
    for src in ("127.0.5.9", "127.0.5.200"):
        for _ in range(2):
            answers = _burst(socket.AF_INET, "127.0.0.1", port, names, clients=2, src=src)
            assert {t for m in answers.values() for t in _texts(m)} == {"127.0.5.104"}
    assert stack.server.stats.udp_cached > 0
    stranger = _burst(socket.AF_INET, "127.0.0.1", port, names, clients=1, src="127.0.6.1")
    assert {m.rcode() for m in stranger.values()} == {dns.rcode.REFUSED}


def test_a_failing_query_costs_only_its_own_answer(stack: Stack) -> None:
    port = stack.server.add(ipaddress.ip_address("127.0.0.1"), 0, None)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for _ in range(3):  # the good names get cached on the way
            queries = [dns.message.make_query(n, "A") for n in ("h5.vnet.cove", "boom.vnet.cove")]
            queries.append(dns.message.make_query("h6.vnet.cove", "A"))
            for q in queries:
                s.sendto(q.to_wire(), ("127.0.0.1", port))
            got = {}
            for _ in range(2):
                msg = dns.message.from_wire(s.recv(4096))
                got[msg.question[0].name.to_text()] = _texts(msg)
            assert got == {"h5.vnet.cove.": ["127.0.5.105"], "h6.vnet.cove.": ["127.0.5.106"]}


def test_slow_tcp_clients_use_up_their_own_share_only(stack: Stack) -> None:
    gateway = stack.server.add(ipaddress.ip_address("127.0.0.1"), 0, "vnet")
    host = stack.server.add(ipaddress.ip_address("127.0.0.2"), 0, None)
    hogs: list[socket.socket] = []
    try:
        # One container opens 80 connections to its gateway and sends one
        # byte on each, then nothing (more than the old shared 64 slots).
        for _ in range(80):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.5.9", 0))
            s.connect(("127.0.0.1", gateway))
            s.send(b"\x00")
            hogs.append(s)
        time.sleep(0.2)
        q = dns.message.make_query("h5.vnet.cove", "A")
        # The host listener, and another container on the same gateway, are
        # still answered over TCP.
        assert _texts(dns.query.tcp(q, "127.0.0.2", port=host, timeout=2)) == ["127.0.5.105"]
        other = dns.query.tcp(q, "127.0.0.1", port=gateway, timeout=2, source="127.0.5.200")
        assert _texts(other) == ["127.0.5.105"]
        # The hog holds its own share (8 connections) and no more: the rest
        # of its connections were closed at once, not queued.
        assert 8 <= stack.server._tcp_slots.held <= 10
    finally:
        for s in hogs:
            s.close()


def test_answers_are_counted_by_response_code_per_listener(stack: Stack) -> None:
    host = stack.server.add(ipaddress.ip_address("127.0.0.1"), 0, None)
    gw = stack.server.add(ipaddress.ip_address("127.0.0.1"), 0, "vnet")

    def ask(name: str, port: int, src: str = "", tcp: bool = False) -> int:
        q = dns.message.make_query(name, "A")
        if tcp:
            return int(dns.query.tcp(q, "127.0.0.1", port=port, timeout=2).rcode())
        return int(dns.query.udp(q, "127.0.0.1", port=port, timeout=2, source=src or None).rcode())

    # Each name three times over UDP: the slow path once, then the hot path.
    for _ in range(3):
        assert ask("h7.vnet.cove", host) == dns.rcode.NOERROR
        assert ask("nobody.vnet.cove", host) == dns.rcode.NXDOMAIN
        assert ask("h7", gw, src="127.0.5.9") == dns.rcode.NOERROR
        assert ask("h7", gw, src="127.0.6.1") == dns.rcode.REFUSED  # a stranger
    assert ask("outside.test", host) == dns.rcode.NOERROR  # forwarded
    assert ask("h8.vnet.cove", host, tcp=True) == dns.rcode.NOERROR
    assert ask("nobody.vnet.cove", host, tcp=True) == dns.rcode.NXDOMAIN
    rc = stack.server.stats.rcodes
    assert (rc[None][0], rc[None][3], rc[None][5]) == (5, 4, 0)
    assert (rc["vnet"][0], rc["vnet"][3], rc["vnet"][5]) == (3, 0, 3)
    assert stack.server.stats.udp_cached > 0
    # A listener removed and added again keeps counting on.
    stack.server.remove(ipaddress.ip_address("127.0.0.1"), gw)
    gw = stack.server.add(ipaddress.ip_address("127.0.0.1"), 0, "vnet")
    assert ask("h7", gw, src="127.0.5.9") == dns.rcode.NOERROR
    assert stack.server.stats.rcodes["vnet"][0] == 4
