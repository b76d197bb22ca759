"""Forwarding to upstreams: a stub upstream on loopback that the test starts."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from cove.clock import ManualClock, SystemClock
from cove.dns.forward import Forwarder, ResolvConfUpstreams, Upstream, parse_resolv_conf
from cove.dns.testing import StubMode, StubUpstream
from cove.dns.wire import parse_query
from cove.errors import InvalidArgument


@pytest.fixture
def stub() -> Iterator[StubUpstream]:
    s = StubUpstream("127.0.0.1", {"example.test": [ipaddress.ip_address("192.0.2.7")]}, ttl=30)
    yield s
    s.close()


def _ask(fw: Forwarder, name: str, **kw: object) -> dns.message.Message:
    q = parse_query(dns.message.make_query(name, "A", **kw).to_wire())  # type: ignore[arg-type]
    wire = fw.query(q)
    msg = dns.message.from_wire(wire)
    assert msg.id == q.id
    return msg


def _up(s: StubUpstream) -> Upstream:
    return Upstream(s.address, s.port)


def test_forwards_and_caches_counting_ttls_down(stub: StubUpstream) -> None:
    clock = ManualClock()
    fw = Forwarder(lambda: [_up(stub)], clock, timeout=1.0)
    msg = _ask(fw, "Example.TEST")
    assert [r.address for r in msg.answer[0]] == ["192.0.2.7"]
    assert str(msg.question[0].name) == "Example.TEST."
    clock.advance(10)
    again = _ask(fw, "example.test")
    assert again.answer[0].ttl == 20
    assert stub.queries == 1
    clock.advance(25)  # past the TTL: asks again
    _ask(fw, "example.test")
    assert stub.queries == 2


def test_negative_answers_are_cached_for_the_soa_negative_ttl(stub: StubUpstream) -> None:
    clock = ManualClock()
    fw = Forwarder(lambda: [_up(stub)], clock)
    assert _ask(fw, "missing.test").rcode() == dns.rcode.NXDOMAIN
    clock.advance(59)
    assert _ask(fw, "missing.test").rcode() == dns.rcode.NXDOMAIN
    assert stub.queries == 1
    clock.advance(2)
    _ask(fw, "missing.test")
    assert stub.queries == 2


@pytest.mark.parametrize("mode", [StubMode.SILENT, StubMode.GARBAGE])
def test_timeout_or_garbage_gives_servfail_quickly(stub: StubUpstream, mode: StubMode) -> None:
    stub.mode = mode
    fw = Forwarder(lambda: [_up(stub), _up(stub)], SystemClock(), timeout=0.2)
    start = time.monotonic()
    assert _ask(fw, "example.test").rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - start < 2.0


def test_falls_over_to_the_next_upstream(stub: StubUpstream) -> None:
    dead = StubUpstream("127.0.0.1")
    dead.mode = StubMode.SILENT
    try:
        fw = Forwarder(lambda: [_up(dead), _up(stub)], SystemClock(), timeout=0.2)
        assert [r.address for r in _ask(fw, "example.test").answer[0]] == ["192.0.2.7"]
    finally:
        dead.close()


def test_edns_client_gets_an_edns_answer(stub: StubUpstream) -> None:
    fw = Forwarder(lambda: [_up(stub)], ManualClock())
    assert _ask(fw, "example.test", use_edns=0).edns == 0
    assert _ask(fw, "example.test").edns == -1


def test_resolv_conf_parsing_and_upstream_syntax() -> None:
    text = "# c\nsearch x\nnameserver 10.0.0.1\nnameserver fe80::1%eth0\nnameserver bad\n"
    text += "nameserver 10.0.0.2\nnameserver 10.0.0.3\n"
    got = parse_resolv_conf(text)
    assert [str(u.address) for u in got] == ["10.0.0.1", "fe80::1", "10.0.0.2"]
    assert Upstream.parse("[::1]:5353") == Upstream(ipaddress.ip_address("::1"), 5353)
    assert Upstream.parse("127.0.0.9:53").port == 53
    with pytest.raises(InvalidArgument):
        Upstream.parse("nonsense")


def test_resolv_conf_is_reread_when_it_changes(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.5\n")
    clock = ManualClock()
    source = ResolvConfUpstreams(str(conf), clock)
    assert [str(u.address) for u in source()] == ["127.0.0.5"]
    conf.write_text("nameserver 127.0.0.6\nnameserver 127.0.0.7\n")
    assert [str(u.address) for u in source()] == ["127.0.0.5"]  # checked once a second
    clock.advance(1.5)
    assert [str(u.address) for u in source()] == ["127.0.0.6", "127.0.0.7"]
