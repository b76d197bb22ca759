"""Helpers for testing DNS (like ``trio.testing``): a stub upstream resolver
and store writers. Not used by cove itself.

``StubUpstream`` is a tiny authoritative server on a loopback address that a
test starts itself, so forwarding is never tested against real resolvers.
Its ``mode`` makes it answer, stay silent (a timeout) or answer garbage.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import threading
from collections.abc import Mapping, Sequence
from enum import Enum

from cove.dns.wire import (
    HEADER,
    Message,
    QueryRejected,
    Rcode,
    Record,
    RRType,
    Soa,
    build_response,
    parse_query,
)
from cove.model import Endpoint, IPAddress, Network, Subnet
from cove.store.base import Store


class StubMode(Enum):
    ANSWER = "answer"
    SILENT = "silent"
    GARBAGE = "garbage"


class StubUpstream:
    """Answers A queries from ``records`` (name -> addresses) with ``ttl``;
    other names get NXDOMAIN with an SOA whose negative TTL is
    ``negative_ttl``. Counts the queries it received in ``queries``."""

    def __init__(
        self,
        address: str = "127.0.0.1",
        records: Mapping[str, Sequence[IPAddress]] | None = None,
        *,
        ttl: int = 300,
        negative_ttl: int = 60,
        port: int = 0,
    ) -> None:
        self.records = dict(records or {})
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.mode = StubMode.ANSWER
        self.queries = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((address, port))
        self._sock.settimeout(0.1)
        self.address = ipaddress.ip_address(address)
        self.port: int = self._sock.getsockname()[1]
        self._running = True
        self._thread = threading.Thread(target=self._run, name="stub-upstream", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=2)
        self._sock.close()

    def _run(self) -> None:
        while self._running:
            try:
                data, addr = self._sock.recvfrom(4096)
            except OSError:
                continue
            self.queries += 1
            out = self._answer(data)
            if out is not None:
                self._sock.sendto(out, addr)

    def _answer(self, data: bytes) -> bytes | None:
        if self.mode is StubMode.SILENT:
            return None
        if self.mode is StubMode.GARBAGE:
            return data[:2] + b"\x81\x80garbage"
        try:
            q = parse_query(data)
        except QueryRejected:
            return None
        addrs = self.records.get(q.name)
        if addrs is None:
            soa = Soa("ns.stub", "h.stub", 1, 1, 1, 1, self.negative_ttl)
            auth = (Record("stub", RRType.SOA, 3600, soa),)
            msg = Message(Rcode.NXDOMAIN, (), auth, authoritative=True)
        else:
            answers = tuple(
                Record(q.name, RRType.A if a.version == 4 else RRType.AAAA, self.ttl, a)
                for a in addrs
                if (q.qtype == RRType.A) == (a.version == 4)
            )
            msg = Message(Rcode.NOERROR, answers)
        return build_response(q, msg, limit=4096)


def put_network(
    store: Store,
    name: str,
    cidr: str,
    *,
    internal: bool = False,
    ipv6: str | None = None,
    bridge: str | None = None,
) -> Network:
    """A network record; ``bridge`` names its device (gateway listeners are
    bound to it), by default a made-up one."""
    subnets = [_subnet(cidr)]
    if ipv6:
        subnets.append(_subnet(ipv6))
    net = Network(
        id=f"id-{name}",
        name=name,
        subnets=tuple(subnets),
        bridge=bridge or f"cvbr-{name}"[:15],
        internal=internal,
    )
    store.put(f"networks/{name}", json.dumps(net.to_json()).encode())
    return net


def _subnet(cidr: str) -> Subnet:
    net = ipaddress.ip_network(cidr)
    return Subnet(net, net.network_address + 1)


def put_endpoint(
    store: Store,
    network: str,
    container: str,
    ipv4: str | None,
    *,
    ipv6: str | None = None,
    aliases: Sequence[str] = (),
    services: Sequence[str] = (),
    container_id: str | None = None,
    node: str = "testhost",
) -> Endpoint:
    cid = container_id or f"cid-{container}"
    ep = Endpoint(
        id=f"{cid}-{network}",
        network=network,
        container_id=cid,
        container_name=container,
        interface="eth0",
        host_veth="cvx",
        mac="02:00:00:00:00:01",
        ipv4=ipaddress.IPv4Address(ipv4) if ipv4 else None,
        ipv6=ipaddress.IPv6Address(ipv6) if ipv6 else None,
        aliases=tuple(aliases),
        services=tuple(services),
        node=node,
    )
    store.put(endpoint_key(ep), json.dumps(ep.to_json()).encode())
    return ep


def endpoint_key(ep: Endpoint) -> str:
    return ep.key


def header(wire: bytes) -> tuple[int, int, int, int, int, int]:
    """The six header fields of a DNS message."""
    qid, flags, qd, an, ns, ar = HEADER.unpack_from(wire)
    return qid, flags, qd, an, ns, ar


def rcode_of(wire: bytes) -> int:
    return struct.unpack_from("!H", wire, 2)[0] & 0xF  # type: ignore[no-any-return]
