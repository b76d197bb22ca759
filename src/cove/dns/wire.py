"""DNS wire format, the part cove needs: strict query parsing and response
building. Pure: bytes in, bytes out, no sockets.

Parsing is deliberately strict because every listener faces untrusted
containers: anything that is not one well-formed question (with at most one
OPT record) is rejected with ``QueryRejected``, whose ``rcode`` says how to
answer (FORMERR, NOTIMP, BADVERS) or ``None`` to drop the packet silently
(too short to carry an ID, or a response rather than a query, which must never
be answered so that two servers cannot be made to ping-pong).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from cove.errors import InvalidArgument

HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")
_SRV = struct.Struct("!HHH")
_SOA = struct.Struct("!IIIII")

MAX_NAME = 255
MAX_UDP = 4096  # the most we ever send over UDP, whatever a client advertises
ADVERTISED_UDP = 1232  # what our OPT record offers (DNS flag day 2020: no fragments)
CLASSIC_UDP = 512
TCP_LIMIT = 65535

FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080
FLAG_CD = 0x0010


class Rcode(IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    BADVERS = 16  # extended: needs EDNS0, upper bits go into the OPT record


class RRType(IntEnum):
    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    PTR = 12
    MX = 15
    TXT = 16
    AAAA = 28
    SRV = 33
    OPT = 41
    IXFR = 251
    AXFR = 252
    ANY = 255


CLASS_IN = 1
CLASS_ANY = 255


class QueryRejected(InvalidArgument):
    """Raised by ``parse_query`` for a packet that is not an answerable query.

    ``rcode`` is the response code to answer with, or ``None`` when the packet
    must be dropped. ``question`` is the question section to echo (empty when
    it could not be parsed); ``edns`` whether the query carried an OPT record.
    """

    def __init__(
        self,
        message: str,
        rcode: Rcode | None,
        *,
        question: bytes = b"",
        edns: bool = False,
    ) -> None:
        super().__init__(message)
        self.rcode = rcode
        self.question = question
        self.edns = edns


@dataclass(frozen=True, slots=True)
class Edns:
    udp_size: int
    version: int = 0
    do: bool = False


@dataclass(frozen=True, slots=True)
class Query:
    """One parsed query. ``labels`` are lower-case; ``question`` is the
    question section exactly as received (a client's 0x20 mixed case must be
    echoed back)."""

    id: int
    flags: int
    labels: tuple[str, ...]
    qtype: int
    qclass: int
    question: bytes
    edns: Edns | None = None

    @property
    def name(self) -> str:
        return ".".join(self.labels)

    @property
    def key(self) -> bytes:
        """The question lower-cased: the cache key (qtype and qclass are kept
        apart so that lower-casing cannot touch them)."""
        return self.question[:-4].lower() + self.question[-4:]

    def udp_limit(self, server_max: int = MAX_UDP) -> int:
        if self.edns is None:
            return CLASSIC_UDP
        return max(CLASSIC_UDP, min(self.edns.udp_size, server_max))


def parse_query(data: bytes) -> Query:
    """Parse one query. Raises ``QueryRejected`` for anything else."""
    n = len(data)
    if n < HEADER.size:
        raise QueryRejected("shorter than a header", None)
    qid, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if flags & FLAG_QR:
        raise QueryRejected("a response, not a query", None)
    if (flags >> 11) & 0xF != 0:
        raise QueryRejected("opcode other than QUERY", Rcode.NOTIMP)
    if qdcount != 1:
        raise QueryRejected("question count is not 1", Rcode.FORMERR)
    pos = HEADER.size
    labels: list[str] = []
    total = 1
    while True:
        if pos >= n:
            raise QueryRejected("question name runs past the end", Rcode.FORMERR)
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0:
            # The question is the first name in the packet, so a pointer can
            # only point backwards into the header: never valid.
            raise QueryRejected("compressed or extended label in question", Rcode.FORMERR)
        end = pos + 1 + length
        total += length + 1
        if end > n or total > MAX_NAME:
            raise QueryRejected("question name too long or truncated", Rcode.FORMERR)
        label = data[pos + 1 : end]
        if b"." in label:
            raise QueryRejected("a dot inside a label", Rcode.FORMERR)
        labels.append(label.lower().decode("latin-1"))
        pos = end
    if pos + 4 > n:
        raise QueryRejected("question truncated", Rcode.FORMERR)
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    pos += 4
    question = data[HEADER.size : pos]
    if ancount or nscount:
        raise QueryRejected("records in answer or authority", Rcode.FORMERR, question=question)
    edns: Edns | None = None
    for _ in range(arcount):
        pos, is_root = skip_name(data, pos, question)
        if pos + _RR_FIXED.size > n:
            raise QueryRejected("additional record truncated", Rcode.FORMERR, question=question)
        rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, pos)
        pos += _RR_FIXED.size
        if pos + rdlen > n:
            raise QueryRejected("rdata runs past the end", Rcode.FORMERR, question=question)
        if rtype == RRType.OPT:
            if edns is not None or not is_root:
                raise QueryRejected("bad or second OPT record", Rcode.FORMERR, question=question)
            _check_options(data, pos, pos + rdlen, question)
            edns = Edns(udp_size=rclass, version=(ttl >> 16) & 0xFF, do=bool(ttl & 0x8000))
        pos += rdlen
    has_edns = edns is not None
    if pos != n:
        raise QueryRejected("trailing bytes", Rcode.FORMERR, question=question, edns=has_edns)
    if edns is not None and edns.version != 0:
        raise QueryRejected("unsupported EDNS version", Rcode.BADVERS, question=question, edns=True)
    if qtype in (RRType.OPT, 0):
        raise QueryRejected(
            "meta type in question", Rcode.FORMERR, question=question, edns=has_edns
        )
    if qtype in (RRType.AXFR, RRType.IXFR):
        raise QueryRejected("zone transfer", Rcode.NOTIMP, question=question, edns=has_edns)
    if qclass not in (CLASS_IN, CLASS_ANY):
        raise QueryRejected("class other than IN", Rcode.NOTIMP, question=question, edns=has_edns)
    return Query(qid, flags, tuple(labels), qtype, qclass, question, edns)


def skip_name(data: bytes, pos: int, question: bytes) -> tuple[int, bool]:
    """Step over a possibly compressed name; returns the position after it and
    whether it is the root. Pointers must point strictly backwards, which
    rules out loops."""
    n = len(data)
    start = pos
    length = data[pos] if pos < n else -1
    if length == 0:
        return pos + 1, True
    limit = pos
    hops = 0
    after = -1
    while True:
        if pos >= n:
            raise QueryRejected("name runs past the end", Rcode.FORMERR, question=question)
        length = data[pos]
        if length == 0:
            return (pos + 1 if after < 0 else after), False
        if length & 0xC0 == 0xC0:
            if pos + 1 >= n:
                raise QueryRejected("pointer truncated", Rcode.FORMERR, question=question)
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if after < 0:
                after = pos + 2
            hops += 1
            if target >= limit or hops > 64:
                raise QueryRejected("compression loop", Rcode.FORMERR, question=question)
            limit = target
            pos = target
            continue
        if length & 0xC0:
            raise QueryRejected("extended label type", Rcode.FORMERR, question=question)
        pos += 1 + length
        if pos - start > MAX_NAME and after < 0:
            raise QueryRejected("name too long", Rcode.FORMERR, question=question)


def _check_options(data: bytes, pos: int, end: int, question: bytes) -> None:
    while pos < end:
        if pos + 4 > end:
            raise QueryRejected("EDNS option header truncated", Rcode.FORMERR, question=question)
        (length,) = struct.unpack_from("!H", data, pos + 2)
        pos += 4 + length
    if pos != end:
        raise QueryRejected("EDNS option length overruns", Rcode.FORMERR, question=question)


# -- records ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class Soa:
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


RData = ipaddress.IPv4Address | ipaddress.IPv6Address | Srv | Soa | str


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record; ``name`` is dotted and lower-case without the
    final dot; ``data`` is an address (A, AAAA), a name (PTR), ``Srv`` or
    ``Soa``."""

    name: str
    rtype: RRType
    ttl: int
    data: RData


class _Writer:
    """Builds a message with name compression (suffix -> offset)."""

    def __init__(self, header: bytes, question: bytes, labels: Sequence[str]) -> None:
        self.buf = bytearray(header)
        self.buf += question
        self.names: dict[str, int] = {}
        offset = HEADER.size
        for i, label in enumerate(labels):
            self.names.setdefault(".".join(labels[i:]), offset)
            offset += 1 + len(label)

    def name(self, name: str) -> None:
        labels = name.split(".") if name else []
        for i in range(len(labels)):
            suffix = ".".join(labels[i:])
            offset = self.names.get(suffix)
            if offset is not None:
                self.buf += struct.pack("!H", 0xC000 | offset)
                return
            if len(self.buf) < 0x3FFF:
                self.names[suffix] = len(self.buf)
            raw = labels[i].encode("latin-1", "replace")[:63]
            self.buf.append(len(raw))
            self.buf += raw
        self.buf.append(0)

    def record(self, rr: Record) -> None:
        self.name(rr.name)
        fixed = len(self.buf)
        self.buf += _RR_FIXED.pack(rr.rtype, CLASS_IN, rr.ttl, 0)
        start = len(self.buf)
        data = rr.data
        if isinstance(data, ipaddress.IPv4Address | ipaddress.IPv6Address):
            self.buf += data.packed
        elif isinstance(data, Srv):
            self.buf += _SRV.pack(data.priority, data.weight, data.port)
            self.name(data.target)
        elif isinstance(data, Soa):
            self.name(data.mname)
            self.name(data.rname)
            self.buf += _SOA.pack(data.serial, data.refresh, data.retry, data.expire, data.minimum)
        else:
            self.name(data)
        struct.pack_into("!H", self.buf, fixed + 8, len(self.buf) - start)


@dataclass(frozen=True, slots=True)
class Message:
    """What to answer, before encoding."""

    rcode: Rcode
    answers: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()
    authoritative: bool = True


def build_response(query: Query, msg: Message, *, limit: int, ra: bool = True) -> bytes:
    """Encode ``msg`` as the answer to ``query`` in at most ``limit`` bytes.

    Additional records that do not fit are left out silently (RFC 2181 9);
    if the answer or authority does not fit, as many answers as fit are kept
    and TC is set, so the client retries over TCP."""
    flags = FLAG_QR | (query.flags & (FLAG_RD | FLAG_CD)) | (msg.rcode & 0xF)
    if msg.authoritative:
        flags |= FLAG_AA
    if ra:
        flags |= FLAG_RA
    opt = b""
    if query.edns is not None:
        opt = _opt(msg.rcode)
    room = limit - len(opt)
    w = _Writer(b"\0" * HEADER.size, query.question, query.labels)
    counts = [0, 0, 0]
    truncated = False
    for section, records in enumerate((msg.answers, msg.authority, msg.additional)):
        for rr in records:
            mark = len(w.buf)
            w.record(rr)
            if len(w.buf) > room:
                del w.buf[mark:]
                truncated = section < 2
                break
            counts[section] += 1
        else:
            continue
        break
    if truncated:
        flags |= FLAG_TC
    w.buf += opt
    HEADER.pack_into(w.buf, 0, query.id, flags, 1, counts[0], counts[1], counts[2] + bool(opt))
    return bytes(w.buf)


def build_error(data: bytes, rejected: QueryRejected) -> bytes | None:
    """The answer to a rejected packet (``None``: drop it)."""
    if rejected.rcode is None or len(data) < HEADER.size:
        return None
    qid, qflags = struct.unpack_from("!HH", data)
    flags = FLAG_QR | (qflags & 0x7800) | (qflags & FLAG_RD) | (rejected.rcode & 0xF)
    qd = 1 if rejected.question else 0
    opt = _opt(rejected.rcode) if rejected.edns else b""
    header = HEADER.pack(qid, flags, qd, 0, 0, 1 if opt else 0)
    return header + rejected.question + opt


def build_status(query: Query, rcode: Rcode, *, ra: bool = True, tc: bool = False) -> bytes:
    """A bare answer with just the question: REFUSED, SERVFAIL, or TC."""
    flags = FLAG_QR | (query.flags & (FLAG_RD | FLAG_CD)) | (rcode & 0xF)
    if ra:
        flags |= FLAG_RA
    if tc:
        flags |= FLAG_TC
    opt = _opt(rcode) if query.edns is not None else b""
    return HEADER.pack(query.id, flags, 1, 0, 0, 1 if opt else 0) + query.question + opt


def _opt(rcode: int) -> bytes:
    ext = (rcode >> 4) & 0xFF
    return b"\0" + _RR_FIXED.pack(RRType.OPT, ADVERTISED_UDP, ext << 24, 0)


def encode_query(qid: int, question: bytes, *, edns_size: int | None, rd: bool = True) -> bytes:
    """A query for forwarding (our own ID, the client's question)."""
    flags = FLAG_RD if rd else 0
    opt = b""
    if edns_size is not None:
        opt = b"\0" + _RR_FIXED.pack(RRType.OPT, edns_size, 0, 0)
    return HEADER.pack(qid, flags, 1, 0, 0, 1 if opt else 0) + question + opt
