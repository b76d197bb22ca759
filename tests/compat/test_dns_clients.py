"""cove's DNS through real clients: dnspython (UDP, TCP, with and without
EDNS0) and dig, against a DnsService on a loopback port of its own, with a
stub upstream the test starts (never the machine's resolvers)."""

from __future__ import annotations

import ipaddress
import logging
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.reversename
import pytest

from cove.clock import SystemClock
from cove.dns import DnsConfig, DnsService, Upstream
from cove.dns.testing import StubUpstream, endpoint_key, put_endpoint, put_network
from cove.store.hub import WatchHub
from cove.store.memory import MemoryStore

HOST = "127.0.0.1"


@dataclass
class Server:
    store: MemoryStore
    dns: DnsService
    upstream: StubUpstream

    @property
    def port(self) -> int:
        return self.dns.host_port


@pytest.fixture
def server() -> Iterator[Server]:
    store = MemoryStore(SystemClock())
    put_network(store, "vnet", "10.89.0.0/24", ipv6="fd00:89::/64")
    put_endpoint(store, "vnet", "redis", "10.89.0.3", ipv6="fd00:89::3")
    put_endpoint(store, "vnet", "web", "10.89.0.4", services=["web:8080"])
    put_endpoint(store, "vnet", "web2", "10.89.0.5", services=["web:8081"])
    for i in range(60):
        put_endpoint(store, "vnet", f"rep{i}", f"10.89.0.{100 + i}", aliases=["many"])
    up = StubUpstream("127.0.0.1", {"outside.test": [ipaddress.ip_address("192.0.2.1")]})
    cfg = DnsConfig(host_port=0, upstreams=(Upstream(up.address, up.port),), upstream_timeout=0.5)
    hub = WatchHub(store)
    hub.start()
    svc = DnsService(store, SystemClock(), cfg, hub=hub)
    svc.start()
    yield Server(store, svc, up)
    svc.stop()
    hub.stop()
    up.close()
    store.close()


def _udp(server: Server, name: str, rdtype: str = "A", **kw: object) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    return dns.query.udp(q, HOST, port=server.port, timeout=2)


def _tcp(server: Server, name: str, rdtype: str = "A", **kw: object) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    return dns.query.tcp(q, HOST, port=server.port, timeout=2)


def _texts(msg: dns.message.Message) -> list[str]:
    return sorted(r.to_text() for rrset in msg.answer for r in rrset)


@pytest.mark.parametrize("edns", [-1, 0])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dnspython_a_aaaa_over_udp_and_tcp(server: Server, transport: str, edns: int) -> None:
    ask = _udp if transport == "udp" else _tcp
    msg = ask(server, "redis.vnet.cove", use_edns=edns)
    assert msg.rcode() == dns.rcode.NOERROR and msg.flags & dns.flags.AA
    assert _texts(msg) == ["10.89.0.3"]
    assert msg.answer[0].ttl == 0
    assert msg.edns == edns
    assert _texts(ask(server, "REDIS.vnet.consul", "AAAA", use_edns=edns)) == ["fd00:89::3"]
    nx = ask(server, "ghost.vnet.cove", use_edns=edns)
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].rdtype == dns.rdatatype.SOA


def test_truncated_udp_answer_has_tc_and_tcp_has_all(server: Server) -> None:
    small = _udp(server, "many.vnet.cove")
    assert small.flags & dns.flags.TC
    assert len(small.to_wire()) <= 512
    big = _udp(server, "many.vnet.cove", use_edns=0, payload=4096)
    assert not big.flags & dns.flags.TC and len(_texts(big)) == 60
    assert len(_texts(_tcp(server, "many.vnet.cove"))) == 60


def test_answers_follow_the_store(server: Server) -> None:
    assert _udp(server, "late.vnet.cove").rcode() == dns.rcode.NXDOMAIN  # cached NXDOMAIN
    start = time.monotonic()
    ep = put_endpoint(server.store, "vnet", "late", "10.89.0.9")
    while _texts(_udp(server, "late.vnet.cove")) != ["10.89.0.9"]:
        assert time.monotonic() - start < 5, "name never appeared"
        time.sleep(0.005)
    server.store.delete(endpoint_key(ep))
    while _udp(server, "late.vnet.cove").rcode() != dns.rcode.NXDOMAIN:
        assert time.monotonic() - start < 5, "name never went away"
        time.sleep(0.005)


def _dig(server: Server, *args: str) -> list[str]:
    out = subprocess.run(
        ["dig", f"@{HOST}", "-p", str(server.port), "+short", "+tries=1", "+time=2", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return sorted(out.stdout.split("\n")[:-1])


needs_dig = pytest.mark.skipif(shutil.which("dig") is None, reason="dig not installed")


@needs_dig
def test_dig_a_aaaa_srv_ptr(server: Server) -> None:
    assert _dig(server, "redis.vnet.cove") == ["10.89.0.3"]
    assert _dig(server, "redis.vnet.cove", "AAAA") == ["fd00:89::3"]
    assert _dig(server, "web.service.cove") == ["10.89.0.4", "10.89.0.5"]
    srv = _dig(server, "_web._tcp.service.cove", "SRV")
    assert [line.split()[2] for line in srv] in (["8080", "8081"], ["8081", "8080"])
    assert _dig(server, "-x", "10.89.0.3") == ["redis.vnet.cove."]
    assert _dig(server, "outside.test") == ["192.0.2.1"]  # forwarded to the stub


@needs_dig
def test_dig_retries_over_tcp_after_tc(server: Server) -> None:
    out = subprocess.run(
        ["dig", f"@{HOST}", "-p", str(server.port), "+noedns", "+tries=1", "many.vnet.cove"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    assert "Truncated, retrying in TCP mode" in out
    assert out.count("IN\tA\t10.89.0.") == 60


def _fuzz_packets(rng: random.Random, seed_queries: list[bytes]) -> Iterator[bytes]:
    while True:
        kind = rng.random()
        base = bytearray(rng.choice(seed_queries))
        if kind < 0.25:
            yield rng.randbytes(rng.randrange(0, 300))
        elif kind < 0.55:
            for _ in range(rng.randrange(1, 6)):
                i = rng.randrange(len(base))
                base[i] = rng.randrange(256)
            yield bytes(base)
        elif kind < 0.7:
            yield bytes(base[: rng.randrange(len(base))])
        elif kind < 0.85:
            base[4:12] = rng.randbytes(8)  # random section counts
            yield bytes(base) + rng.randbytes(rng.randrange(0, 40))
        else:
            # pointers anywhere, including loops
            ptr = 0xC000 | rng.randrange(0, len(base) + 8)
            base[11] = 1
            yield bytes(base) + ptr.to_bytes(2, "big") + rng.randbytes(rng.randrange(0, 12))


def test_fuzz_100k_packets_then_normal_queries_still_work(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="cove.dns")
    rng = random.Random(20261121)
    seeds = [
        dns.message.make_query(n, t, use_edns=e).to_wire()
        for n in ("redis.vnet.cove", "web.service.cove", "outside.test", "3.0.89.10.in-addr.arpa")
        for t in ("A", "SRV", "PTR")
        for e in (-1, 0)
    ]
    probe = dns.message.make_query("redis.vnet.cove", "A")
    probe.id = 4242
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((HOST, server.port))
    s.settimeout(2)
    packets = _fuzz_packets(rng, seeds)
    sent = 0
    deadline = time.monotonic() + 60
    with s:
        while sent < 100_000:
            for _ in range(200):
                s.send(next(packets))
            sent += 200
            _probe(s, probe.to_wire())
            assert time.monotonic() < deadline, "fuzzing took too long"
    assert sent >= 100_000
    assert _texts(_udp(server, "redis.vnet.cove")) == ["10.89.0.3"]
    assert _texts(_tcp(server, "web.service.cove")) == ["10.89.0.4", "10.89.0.5"]
    assert [r for r in caplog.records if r.name.startswith("cove.dns")] == []


def _probe(s: socket.socket, query: bytes, tries: int = 5) -> None:
    """Wait for the probe's answer (the server is FIFO: it means the server
    kept up). UDP may drop a datagram when a burst fills a socket buffer, so
    resend on silence as any resolver would; a server that stopped answering
    stays silent through every try and fails the test."""
    for _ in range(tries):
        s.send(query)
        try:
            while s.recv(65535)[:2] != query[:2]:
                pass
            return
        except TimeoutError:
            continue
    raise AssertionError(f"the server did not answer the probe in {tries} tries")


def _gateway_port(server: Server, address: str) -> int:
    for addr, port, net in server.dns.listening():
        if str(addr) == address and net is not None:
            return port
    raise AssertionError(f"no listener on {address}")


def test_gateway_listeners_come_and_go_and_scope_by_source(tmp_path: object) -> None:
    store = MemoryStore(SystemClock())
    put_network(store, "lo", "127.0.0.0/8")  # so that 127.0.0.1 is "inside" it
    put_network(store, "vnet", "10.89.0.0/24")
    put_endpoint(store, "lo", "peer", "127.0.0.9")
    put_endpoint(store, "vnet", "redis", "10.89.0.3")
    hub = WatchHub(store)
    hub.start()
    svc = DnsService(store, SystemClock(), DnsConfig(host_port=0, gateway_port=0), hub=hub)
    svc.start()
    server = Server(store, svc, StubUpstream())
    try:
        a, b = ipaddress.ip_address("127.0.0.2"), ipaddress.ip_address("127.0.0.3")
        svc.set_network_listeners({"lo": [a], "vnet": [b]})
        lo_port, vnet_port = _gateway_port(server, "127.0.0.2"), _gateway_port(server, "127.0.0.3")
        q = dns.message.make_query("peer", "A")
        msg = dns.query.udp(q, "127.0.0.2", port=lo_port, timeout=2)
        assert _texts(msg) == ["127.0.0.9"]
        assert dns.query.tcp(q, "127.0.0.2", port=lo_port, timeout=2).answer
        q = dns.message.make_query("redis", "A")
        refused = dns.query.udp(q, "127.0.0.3", port=vnet_port, timeout=2)
        assert refused.rcode() == dns.rcode.REFUSED  # 127.0.0.1 is not on vnet
        svc.set_network_listeners({"lo": [a]})
        assert [str(x) for x, _, n in svc.listening() if n] == ["127.0.0.2"]
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(q, "127.0.0.3", port=vnet_port, timeout=0.3)
    finally:
        svc.stop()
        hub.stop()
        server.upstream.close()
        store.close()


def test_registry_source_follows_health(tmp_path: object) -> None:
    from cove.dns.registry_source import RegistryServices
    from cove.registry import Registry, Status

    store = MemoryStore(SystemClock())
    hub = WatchHub(store)
    hub.start()
    registry = Registry(store, SystemClock(), "node1", node_address="10.1.0.1")
    registry.catalog.ensure_node()  # serfHealth passing: the node is alive
    svc = DnsService(
        store,
        SystemClock(),
        DnsConfig(host_port=0),
        hub=hub,
        services=RegistryServices(registry.queries, hub),
    )
    svc.start()
    server = Server(store, svc, StubUpstream())

    def addrs(name: str, rdtype: str = "A") -> list[str]:
        return _texts(_udp(server, name, rdtype))

    def until(name: str, want: list[str]) -> None:
        deadline = time.monotonic() + 5
        while addrs(name) != want:
            assert time.monotonic() < deadline, f"{name} never became {want}"
            time.sleep(0.01)

    try:
        registry.register_container("api-1", "api", "10.1.0.5", 8080, tags=["v1"])
        registry.register_container("api-2", "api", "10.1.0.6", 8080)
        registry.catalog.update_check("service:api-1", Status.PASSING, "ok")
        until("api.service.cove", ["10.1.0.5"])  # api-2's check has not passed yet
        registry.catalog.update_check("service:api-2", Status.PASSING, "ok")
        until("api.service.cove", ["10.1.0.5", "10.1.0.6"])
        assert addrs("v1.api.service.cove") == ["10.1.0.5"]
        assert addrs("node1.node.cove") == ["10.1.0.1"]
        registry.catalog.update_check("service:api-1", Status.CRITICAL, "down")
        until("api.service.cove", ["10.1.0.6"])
        registry.deregister_container("api-2")
        until("api.service.cove", [])
        assert _udp(server, "api.service.cove").rcode() == dns.rcode.NXDOMAIN
    finally:
        svc.stop()
        hub.stop()
        server.upstream.close()
        store.close()


def test_listen_on_gateways_follows_networks() -> None:
    store = MemoryStore(SystemClock())
    # Gateway 127.0.0.1; the listener is bound to its "bridge", here lo.
    put_network(store, "lo", "127.0.0.0/8", bridge="lo")
    put_endpoint(store, "lo", "peer", "127.0.0.9")
    cfg = DnsConfig(host_port=0, gateway_port=0, listen_on_gateways=True)
    hub = WatchHub(store)
    hub.start()
    svc = DnsService(store, SystemClock(), cfg, hub=hub)
    svc.start()
    server = Server(store, svc, StubUpstream())
    try:
        port = _gateway_port(server, "127.0.0.1")
        q = dns.message.make_query("peer", "A")
        assert _texts(dns.query.udp(q, HOST, port=port, timeout=2)) == ["127.0.0.9"]
        store.delete("networks/lo")
        deadline = time.monotonic() + 5
        while [n for _, _, n in svc.listening() if n]:
            assert time.monotonic() < deadline, "gateway listener never closed"
            time.sleep(0.01)
    finally:
        svc.stop()
        hub.stop()
        server.upstream.close()
        store.close()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_listener_over_udp_and_tcp() -> None:
    store = MemoryStore(SystemClock())
    put_network(store, "vnet", "10.89.0.0/24", ipv6="fd00:89::/64")
    put_endpoint(store, "vnet", "redis", "10.89.0.3", ipv6="fd00:89::3")
    cfg = DnsConfig(host_address=ipaddress.ip_address("::1"), host_port=0)
    hub = WatchHub(store)
    hub.start()
    svc = DnsService(store, SystemClock(), cfg, upstreams=lambda: (), hub=hub)
    svc.start()
    try:
        q = dns.message.make_query("redis.vnet.cove", "AAAA")
        assert _texts(dns.query.udp(q, "::1", port=svc.host_port, timeout=2)) == ["fd00:89::3"]
        assert _texts(dns.query.tcp(q, "::1", port=svc.host_port, timeout=2)) == ["fd00:89::3"]
        ptr = dns.message.make_query(dns.reversename.from_address("fd00:89::3"), "PTR")
        answer = dns.query.udp(ptr, "::1", port=svc.host_port, timeout=2)
        assert _texts(answer) == ["redis.vnet.cove."]
    finally:
        svc.stop()
        hub.stop()
        store.close()


def test_an_upstream_that_is_ourselves_is_skipped() -> None:
    store = MemoryStore(SystemClock())
    holder: list[DnsService] = []
    cfg = DnsConfig(host_port=0, upstream_timeout=2.0)
    hub = WatchHub(store)
    hub.start()
    svc = DnsService(
        store,
        SystemClock(),
        cfg,
        hub=hub,
        upstreams=lambda: [Upstream(ipaddress.ip_address(HOST), holder[0].host_port)],
    )
    holder.append(svc)
    svc.start()
    try:
        start = time.monotonic()
        q = dns.message.make_query("example.test", "A")
        assert dns.query.udp(q, HOST, port=svc.host_port, timeout=3).rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - start < 1.5  # no hop through ourselves and its timeout
    finally:
        svc.stop()
        hub.stop()
        store.close()


def test_answers_converge_while_the_store_churns(server: Server) -> None:
    """Readers hammer a name while a writer keeps moving it: once writing
    stops, every answer is the last address (no stale entry survives)."""
    import threading

    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                _udp(server, "flip.vnet.cove")
                _tcp(server, "flip.vnet.cove", use_edns=0)
            except dns.exception.DNSException:
                pass

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        for i in range(300):
            put_endpoint(server.store, "vnet", "flip", f"10.89.1.{i % 250 + 1}")
        last = ["10.89.1.50"]
    finally:
        stop.set()
        for t in readers:
            t.join()
    deadline = time.monotonic() + 5
    while _texts(_udp(server, "flip.vnet.cove")) != last:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for _ in range(20):
        assert _texts(_udp(server, "flip.vnet.cove")) == last
        assert _texts(_tcp(server, "flip.vnet.cove", use_edns=0)) == last


def test_metrics_count_hot_path_answers(server: Server) -> None:
    for _ in range(5):
        _udp(server, "redis.vnet.cove")
    _udp(server, "outside.test")
    _tcp(server, "redis.vnet.cove")
    values = {name: value for name, _, value in server.dns.metrics()}
    assert values["cove_dns_udp_cached_total"] >= 4  # the first one filled the cache
    assert values["cove_dns_forwarded_total"] == 1
    assert values["cove_dns_tcp_queries_total"] == 1
    assert values["cove_dns_cache_entries"] >= 1
