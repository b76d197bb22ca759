"""The hand-built rtnetlink messages of the attach path (no root needed)."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from cove.datapath import rtnl
from cove.errors import DatapathError


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 4 <= len(data):
        size, kind = struct.unpack_from("=HH", data, pos)
        out[kind & 0x3FFF] = data[pos + 4 : pos + size]
        pos += (size + 3) & ~3
    return out


def test_an_ipv6_address_skips_duplicate_detection_and_keeps_its_prefix() -> None:
    msg = rtnl.new_address(7, ipaddress.ip_interface("fd00::5/64"))
    family, prefixlen, flags, _scope, index = struct.unpack_from("=BBBBI", msg.body)
    assert (family, prefixlen, flags, index) == (10, 64, 0x02, 7)
    assert _attrs(msg.body[8:])[2] == ipaddress.ip_address("fd00::5").packed


def test_a_veth_names_both_ends_and_sends_the_peer_to_the_namespace() -> None:
    msg = rtnl.new_veth("cv0123456789", "eth1", "02:42:0a:59:00:05", 1400, 12, 33)
    top = _attrs(msg.body[16:])
    assert top[3] == b"cv0123456789\0"
    assert struct.unpack("=I", top[10]) == (12,)  # master
    info = _attrs(top[18])
    assert info[1] == b"veth\0"
    peer = _attrs(_attrs(info[2])[1][16:])
    assert peer[3] == b"eth1\0"
    assert peer[1] == bytes.fromhex("02420a590005")
    assert struct.unpack("=I", peer[28]) == (33,)  # namespace fd


def test_a_failed_reply_is_a_datapath_error_unless_ignored() -> None:
    replies = [rtnl.Reply(0), rtnl.Reply(19)]
    with pytest.raises(DatapathError, match="No such device"):
        rtnl.check(replies, "delete link x")
    rtnl.check(replies, "delete link x", ignore=rtnl.NOT_FOUND)


def test_hairpin_is_set_by_name_so_it_can_follow_the_create() -> None:
    msg = rtnl.hairpin("cv0123456789")
    assert struct.unpack_from("=i", msg.body, 4) == (0,)  # no index needed
    top = _attrs(msg.body[16:])
    assert top[3] == b"cv0123456789\0"
    assert _attrs(_attrs(top[18])[5]) == {4: b"\x01"}  # bridge port mode: hairpin
