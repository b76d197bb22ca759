"""A minimal rtnetlink client for the container attach path: a handful of
messages built with ``struct`` on a raw socket, several sent in one
``send`` and acknowledged together.

pyroute2 spends about 0.4 ms of Python per request (building and decoding
every attribute); attaching a container takes seven requests, so on this
one hot path the messages are built by hand. Everything else (observing,
repairing) still goes through pyroute2.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cove.errors import DatapathError

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_SETLINK = 19
RTM_NEWADDR = 20
RTM_NEWROUTE = 24

_NLMSG_ERROR = 2
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_REPLACE = 0x100
_NLM_F_EXCL = 0x200
_NLM_F_CREATE = 0x400
_NLA_F_NESTED = 0x8000

_AF_INET = 2
_AF_INET6 = 10
_IFF_UP = 0x1

_IFLA_ADDRESS = 1
_IFLA_IFNAME = 3
_IFLA_MTU = 4
_IFLA_LINK = 5
_IFLA_MASTER = 10
_IFLA_LINKINFO = 18
_IFLA_GROUP = 27
_IFLA_NET_NS_FD = 28
_IFLA_EXT_MASK = 29
_IFLA_INFO_KIND = 1
_IFLA_INFO_DATA = 2
_IFLA_INFO_SLAVE_DATA = 5
_VETH_INFO_PEER = 1
_IFLA_BRPORT_MODE = 4
_RTEXT_FILTER_SKIP_STATS = 1 << 3

_IFA_ADDRESS = 1
_IFA_LOCAL = 2
_IFA_F_NODAD = 0x02

_RTA_GATEWAY = 5
_RT_TABLE_MAIN = 254
_RTPROT_BOOT = 3
_RTN_UNICAST = 1

_HDR = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")


def _attr(kind: int, data: bytes) -> bytes:
    size = 4 + len(data)
    return struct.pack("=HH", size, kind) + data + b"\0" * (-size % 4)


def _name(text: str) -> bytes:
    return text.encode() + b"\0"


def _mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


@dataclass(frozen=True, slots=True)
class Message:
    """One request: its type, header flags beyond REQUEST|ACK, and body."""

    kind: int
    body: bytes
    flags: int = 0


def new_veth(
    host: str,
    peer: str,
    mac: str,
    mtu: int,
    master: int,
    peer_netns_fd: int,
) -> Message:
    """A veth pair: ``host`` on bridge ``master`` and up, ``peer`` created
    straight in the namespace of ``peer_netns_fd`` with ``mac``."""
    # The peer cannot be brought up before the pair is linked (ENOTCONN):
    # ``set_up`` does it inside the namespace.
    peer_info = _IFINFO.pack(0, 0, 0, 0, 0) + b"".join(
        (
            _attr(_IFLA_IFNAME, _name(peer)),
            _attr(_IFLA_ADDRESS, _mac(mac)),
            _attr(_IFLA_MTU, struct.pack("=I", mtu)),
            _attr(_IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd)),
        )
    )
    info = _attr(_IFLA_INFO_KIND, b"veth\0") + _attr(
        _IFLA_INFO_DATA | _NLA_F_NESTED, _attr(_VETH_INFO_PEER | _NLA_F_NESTED, peer_info)
    )
    body = _IFINFO.pack(0, 0, 0, _IFF_UP, _IFF_UP) + b"".join(
        (
            _attr(_IFLA_IFNAME, _name(host)),
            _attr(_IFLA_MTU, struct.pack("=I", mtu)),
            _attr(_IFLA_MASTER, struct.pack("=I", master)),
            _attr(_IFLA_LINKINFO | _NLA_F_NESTED, info),
        )
    )
    return Message(RTM_NEWLINK, body, _NLM_F_CREATE | _NLM_F_EXCL)


def get_link(name: str) -> Message:
    body = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(_IFLA_IFNAME, _name(name))
    body += _attr(_IFLA_EXT_MASK, struct.pack("=I", _RTEXT_FILTER_SKIP_STATS))
    return Message(RTM_GETLINK, body)


def set_up(index: int) -> Message:
    return Message(RTM_NEWLINK, _IFINFO.pack(0, 0, index, _IFF_UP, _IFF_UP))


def set_down(index: int) -> Message:
    return Message(RTM_NEWLINK, _IFINFO.pack(0, 0, index, 0, _IFF_UP))


def rename(index: int, name: str) -> Message:
    """A link must be down to be renamed."""
    return Message(RTM_NEWLINK, _IFINFO.pack(0, 0, index, 0, 0) + _attr(_IFLA_IFNAME, _name(name)))


def retire(name: str, group: int) -> Message:
    """Link ``name`` down and into ``group``, for ``del_group`` later."""
    body = _IFINFO.pack(0, 0, 0, 0, _IFF_UP) + _attr(_IFLA_IFNAME, _name(name))
    return Message(RTM_NEWLINK, body + _attr(_IFLA_GROUP, struct.pack("=I", group)))


def del_group(group: int) -> Message:
    """Every link in ``group``, deleted by the kernel in one batch."""
    body = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(_IFLA_GROUP, struct.pack("=I", group))
    return Message(RTM_DELLINK, body)


def hairpin(name: str) -> Message:
    """Let the bridge send a frame back out port ``name``, the one it came
    in on (``ip link set NAME type bridge_slave hairpin on``: addressed by
    name, so it can follow the request that creates the link)."""
    mode = _attr(_IFLA_BRPORT_MODE, b"\x01")
    info = _attr(_IFLA_INFO_SLAVE_DATA | _NLA_F_NESTED, mode)
    body = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(_IFLA_IFNAME, _name(name))
    return Message(RTM_NEWLINK, body + _attr(_IFLA_LINKINFO | _NLA_F_NESTED, info))


def new_address(index: int, address: Interface) -> Message:
    family = _AF_INET if address.version == 4 else _AF_INET6
    flags = _IFA_F_NODAD if address.version == 6 else 0
    raw = address.ip.packed
    body = _IFADDR.pack(family, address.network.prefixlen, flags, 0, index)
    body += _attr(_IFA_LOCAL, raw) + _attr(_IFA_ADDRESS, raw)
    return Message(RTM_NEWADDR, body, _NLM_F_CREATE | _NLM_F_EXCL)


def default_route(gateway: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Message:
    family = _AF_INET if gateway.version == 4 else _AF_INET6
    body = _RTMSG.pack(family, 0, 0, 0, _RT_TABLE_MAIN, _RTPROT_BOOT, 0, _RTN_UNICAST, 0)
    body += _attr(_RTA_GATEWAY, gateway.packed)
    return Message(RTM_NEWROUTE, body, _NLM_F_CREATE | _NLM_F_REPLACE)


def del_link(name: str) -> Message:
    return Message(RTM_DELLINK, _IFINFO.pack(0, 0, 0, 0, 0) + _attr(_IFLA_IFNAME, _name(name)))


@dataclass(frozen=True, slots=True)
class Reply:
    """The outcome of one message: ``error`` is 0 or a positive errno;
    ``index`` is the link index a GETLINK answered with."""

    error: int
    index: int = 0
    peer: int = 0  # IFLA_LINK: a veth's peer index, in the peer's namespace


class Rtnl:
    """A raw rtnetlink socket in the namespace it was opened in."""

    def __init__(self) -> None:
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        self._sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, messages: Sequence[Message]) -> list[Reply]:
        """Send ``messages`` in one go (the kernel runs them in order) and
        return one ``Reply`` each, in order."""
        first = self._seq + 1
        out = bytearray()
        for msg in messages:
            self._seq += 1
            flags = _NLM_F_REQUEST | _NLM_F_ACK | msg.flags
            out += _HDR.pack(_HDR.size + len(msg.body), msg.kind, flags, self._seq, 0) + msg.body
        try:
            self._sock.send(bytes(out))
        except OSError as exc:
            raise DatapathError(f"netlink send failed: {exc}") from exc
        replies: dict[int, Reply] = {}
        links: dict[int, tuple[int, int]] = {}
        while len(replies) < len(messages):
            try:
                data = self._sock.recv(65536)
            except OSError as exc:
                raise DatapathError(f"netlink receive failed: {exc}") from exc
            pos = 0
            while pos + _HDR.size <= len(data):
                size, kind, _flags, seq, _pid = _HDR.unpack_from(data, pos)
                if size < _HDR.size:
                    break
                if first <= seq <= self._seq:
                    if kind == _NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, pos + _HDR.size)[0]
                        replies[seq] = Reply(code, *links.get(seq, (0, 0)))
                    elif kind == RTM_NEWLINK:
                        links[seq] = _link_reply(data, pos + _HDR.size, pos + size)
                pos += (size + 3) & ~3
        return [replies[seq] for seq in range(first, self._seq + 1)]


def _link_reply(data: bytes, start: int, end: int) -> tuple[int, int]:
    index = _IFINFO.unpack_from(data, start)[2]
    peer = 0
    pos = start + _IFINFO.size
    while pos + 4 <= end:
        size, kind = struct.unpack_from("=HH", data, pos)
        if size < 4:
            break
        if kind & 0x3FFF == _IFLA_LINK and size >= 8:
            peer = struct.unpack_from("=i", data, pos + 4)[0]
        pos += (size + 3) & ~3
    return index, peer


def check(replies: Sequence[Reply], what: str, ignore: Sequence[int] = ()) -> None:
    """``DatapathError`` for the first reply that failed."""
    for r in replies:
        if r.error and r.error not in ignore:
            raise DatapathError(f"cannot {what}: {os.strerror(r.error)}", errno=str(r.error))


NOT_FOUND = (errno.ENODEV, errno.ENOENT)
