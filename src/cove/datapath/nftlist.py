"""The names of the nftables tables in this namespace, by one nfnetlink
dump (``NFT_MSG_GETTABLE``).

``nft list tables`` builds nft's whole cache first, sets and their
elements included: with a few hundred containers that is some 50 ms of
nft for every network pass, where this dump takes a few microseconds.
"""

from __future__ import annotations

import socket
import struct

_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_NFTABLES = 10
_NFT_MSG_GETTABLE = 1
_NFTA_TABLE_NAME = 1
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_HDR = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")
_ATTR = struct.Struct("=HH")
# nft's names of the NFPROTO_* families.
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse_tables(data: bytes) -> tuple[list[tuple[str, str]], bool]:
    """(family, name) of each table message in one batch, and whether the
    dump ended in it. Raises ``OSError`` for an error message."""
    out: list[tuple[str, str]] = []
    off = 0
    while off + _HDR.size <= len(data):
        length, kind = _HDR.unpack_from(data, off)[:2]
        if length < _HDR.size or off + length > len(data):
            break
        if kind == _NLMSG_DONE:
            return out, True
        if kind == _NLMSG_ERROR:
            code = -struct.unpack_from("=i", data, off + _HDR.size)[0]
            if code:
                raise OSError(code, "nftables table dump failed")
            return out, True
        family = FAMILIES.get(data[off + _HDR.size], str(data[off + _HDR.size]))
        at = off + _HDR.size + _NFGEN.size
        while at + _ATTR.size <= off + length:
            alen, akind = _ATTR.unpack_from(data, at)
            if alen < _ATTR.size:
                break
            if akind & 0x3FFF == _NFTA_TABLE_NAME:
                name = data[at + _ATTR.size : at + alen].split(b"\0", 1)[0]
                out.append((family, name.decode(errors="replace")))
            at += _align(alen)
        off += _align(length)
    return out, False


def list_tables() -> list[tuple[str, str]]:
    """(family, name) of every table in the calling thread's namespace.
    Raises ``OSError`` when the kernel does not answer the dump."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER)
    try:
        sock.settimeout(5)
        sock.bind((0, 0))
        kind = (_NFNL_SUBSYS_NFTABLES << 8) | _NFT_MSG_GETTABLE
        body = _NFGEN.pack(socket.AF_UNSPEC, 0, 0)
        sock.send(_HDR.pack(_HDR.size + len(body), kind, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + body)
        tables: list[tuple[str, str]] = []
        while True:
            found, done = parse_tables(sock.recv(1 << 16))
            tables += found
            if done:
                return tables
    finally:
        sock.close()
