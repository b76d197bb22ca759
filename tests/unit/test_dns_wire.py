"""The DNS codec: strict query parsing and response building."""

from __future__ import annotations

import ipaddress
import struct

import dns.message
import dns.rdatatype
import pytest

from cove.dns.wire import (
    Message,
    QueryRejected,
    Rcode,
    Record,
    RRType,
    build_error,
    build_response,
    parse_query,
)


def _q(name: str = "Redis.VNet.cove", rdtype: str = "A", **kw: object) -> bytes:
    return dns.message.make_query(name, rdtype, **kw).to_wire()  # type: ignore[arg-type]


def _reject(data: bytes) -> QueryRejected:
    with pytest.raises(QueryRejected) as info:
        parse_query(data)
    return info.value


def test_parses_a_plain_query_lower_case_keeping_the_question_as_sent() -> None:
    q = parse_query(_q())
    assert q.labels == ("redis", "vnet", "cove")
    assert q.qtype == RRType.A
    assert q.edns is None
    assert b"Redis" in q.question
    assert q.key == parse_query(_q("redis.vnet.cove")).key


def test_parses_edns_size_and_do_bit() -> None:
    q = parse_query(_q(use_edns=0, payload=1400, want_dnssec=True))
    assert q.edns is not None
    assert (q.edns.udp_size, q.edns.do) == (1400, True)
    assert q.udp_limit() == 1400
    assert parse_query(_q()).udp_limit() == 512


def test_drops_short_packets_and_responses() -> None:
    assert _reject(b"\x12\x34\x01").rcode is None
    resp = dns.message.make_response(dns.message.make_query("a.cove", "A")).to_wire()
    assert _reject(resp).rcode is None


@pytest.mark.parametrize(
    ("mutate", "rcode"),
    [
        (lambda d: d[:2] + bytes([d[2] | 0x10]) + d[3:], Rcode.NOTIMP),  # opcode 2
        (lambda d: d[:4] + b"\x00\x02" + d[6:], Rcode.FORMERR),  # qdcount 2
        (lambda d: d[:4] + b"\x00\x00" + d[6:], Rcode.FORMERR),  # qdcount 0
        (lambda d: d[:-3], Rcode.FORMERR),  # truncated
        (lambda d: d + b"\x00", Rcode.FORMERR),  # trailing byte
        (lambda d: d[:12] + b"\xc0\x0c" + d[-4:], Rcode.FORMERR),  # pointer in question
        (lambda d: d[:12] + b"\x50" + d[13:], Rcode.FORMERR),  # label too long
        (lambda d: d[:-2] + b"\x00\x03", Rcode.NOTIMP),  # class CH
        (lambda d: d[:-4] + b"\x00\xfc" + d[-2:], Rcode.NOTIMP),  # AXFR
        (lambda d: d[:-4] + b"\x00\x29" + d[-2:], Rcode.FORMERR),  # OPT as qtype
    ],
)
def test_rejects_malformed_queries(mutate: object, rcode: Rcode) -> None:
    data = mutate(_q("a.cove"))  # type: ignore[operator]
    assert _reject(data).rcode == rcode


def test_rejects_a_compression_loop_in_the_additional_section() -> None:
    base = bytearray(_q("a.cove"))
    base[11] = 1  # arcount 1
    loop = len(base)
    base += struct.pack("!H", 0xC000 | loop)  # a pointer to itself
    base += struct.pack("!HHIH", 1, 1, 0, 0)
    err = _reject(bytes(base))
    assert err.rcode == Rcode.FORMERR
    answer = build_error(bytes(base), err)
    assert answer is not None
    msg = dns.message.from_wire(answer)
    assert msg.rcode() == Rcode.FORMERR
    assert str(msg.question[0].name) == "a.cove."


def test_rejects_two_opt_records_and_bad_option_lengths() -> None:
    data = bytearray(_q("a.cove", use_edns=0))
    opt = bytes(data[-11:])
    data[11] = 2
    assert _reject(bytes(data) + opt).rcode == Rcode.FORMERR
    bad = bytearray(_q("a.cove", use_edns=0))
    bad[-2:] = b"\x00\x04"
    bad += b"\x00\x0a\x00\x09"  # an option claiming 9 bytes, none follow
    assert _reject(bytes(bad)).rcode == Rcode.FORMERR


def test_unknown_edns_version_gets_badvers() -> None:
    data = _q("a.cove", use_edns=1)
    err = _reject(data)
    assert err.rcode == Rcode.BADVERS
    answer = build_error(data, err)
    assert answer is not None
    assert dns.message.from_wire(answer).rcode() == Rcode.BADVERS


def _records(n: int) -> tuple[Record, ...]:
    return tuple(
        Record("many.cove", RRType.A, 0, ipaddress.IPv4Address(f"10.0.{i // 250}.{i % 250 + 1}"))
        for i in range(n)
    )


def test_response_compresses_owner_names_and_echoes_the_question_case() -> None:
    q = parse_query(_q("MANY.cove"))
    wire = build_response(q, Message(Rcode.NOERROR, _records(3)), limit=512)
    msg = dns.message.from_wire(wire)
    assert msg.flags & dns.flags.AA and msg.flags & dns.flags.QR
    assert str(msg.question[0].name) == "MANY.cove."
    assert sorted(r.address for r in msg.answer[0]) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert len(wire) == len(_q("MANY.cove")) + 3 * 16  # each owner a 2-byte pointer


def test_oversized_answer_is_trimmed_with_tc_and_fits_the_limit() -> None:
    q = parse_query(_q("many.cove"))
    wire = build_response(q, Message(Rcode.NOERROR, _records(100)), limit=512)
    assert len(wire) <= 512
    msg = dns.message.from_wire(wire)
    assert msg.flags & dns.flags.TC
    full = build_response(q, Message(Rcode.NOERROR, _records(100)), limit=65535)
    msg = dns.message.from_wire(full)
    assert not msg.flags & dns.flags.TC
    assert len(msg.answer[0]) == 100


def test_edns_answer_carries_opt_and_uses_the_advertised_size() -> None:
    q = parse_query(_q("many.cove", use_edns=0, payload=1232))
    wire = build_response(q, Message(Rcode.NOERROR, _records(60)), limit=q.udp_limit())
    msg = dns.message.from_wire(wire)
    assert msg.edns == 0
    assert not msg.flags & dns.flags.TC
    assert 512 < len(wire) <= 1232


def test_additional_records_that_do_not_fit_are_left_out_without_tc() -> None:
    q = parse_query(_q("x.cove", "SRV"))
    answers = (Record("x.cove", RRType.A, 0, ipaddress.IPv4Address("10.0.0.1")),)
    extra = _records(40)
    wire = build_response(q, Message(Rcode.NOERROR, answers, (), extra), limit=512)
    msg = dns.message.from_wire(wire)
    assert not msg.flags & dns.flags.TC
    assert len(msg.answer) == 1
    assert 0 < len(msg.additional[0]) < 40
    assert len(wire) <= 512
    assert msg.answer[0].rdtype == dns.rdatatype.A


def test_random_packets_only_ever_raise_query_rejected() -> None:
    import random

    rng = random.Random(4)
    seeds = [_q("a.cove"), _q("x.y.cove", "SRV", use_edns=0), _q("3.0.89.10.in-addr.arpa", "PTR")]
    for _ in range(5_000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        try:
            q = parse_query(bytes(data))
        except QueryRejected as exc:
            answer = build_error(bytes(data), exc)
            assert answer is None or dns.message.from_wire(answer).rcode() == exc.rcode
            continue
        wire = build_response(q, Message(Rcode.NXDOMAIN), limit=512)
        assert dns.message.from_wire(wire).id == q.id
