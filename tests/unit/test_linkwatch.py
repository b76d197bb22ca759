"""Which rtnetlink notifications start a check of the containers' links:
messages built as the kernel sends them, without a socket."""

from __future__ import annotations

import struct

from cove.datapath.linkwatch import concerns_containers, link_name

_AF_BRIDGE = 7


def attr(kind: int, data: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def link(kind: int, name: str, family: int = 0) -> bytes:
    body = struct.pack("=BxHiII", family, 1, 7, 0, 0)
    body += attr(4, struct.pack("=I", 1500)) + attr(3, name.encode() + b"\0")
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def address(kind: int = 20) -> bytes:
    body = struct.pack("=BBBBI", 2, 24, 0, 0, 7) + attr(1, bytes([10, 0, 0, 2]))
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_link_name_is_read_past_other_attributes() -> None:
    assert link_name(link(16, "cv0123456789")) == "cv0123456789"
    assert link_name(address()) is None


def test_host_veths_of_cove_count_and_other_host_links_do_not() -> None:
    assert concerns_containers(link(17, "cv0123456789"), foreign=False)
    assert concerns_containers(link(16, "cv0123456789"), foreign=False)
    assert not concerns_containers(link(16, "cv-front00000"), foreign=False)  # a bridge
    assert not concerns_containers(link(16, "eth0"), foreign=False)
    assert not concerns_containers(address(), foreign=False)
    # A bridge's word about its port's forwarding state changes nothing.
    assert not concerns_containers(link(16, "cv0123456789", _AF_BRIDGE), foreign=False)


def test_anything_from_a_containers_namespace_counts() -> None:
    assert concerns_containers(address(21), foreign=True)
    assert concerns_containers(link(16, "eth0"), foreign=True)


def test_a_batch_counts_if_any_message_in_it_does() -> None:
    batch = link(16, "eth0") + address() + link(17, "cv00000000ab")
    assert concerns_containers(batch, foreign=False)
    assert not concerns_containers(link(16, "eth0") + address(), foreign=False)


def test_truncated_or_malformed_messages_count_as_nothing() -> None:
    msg = link(16, "cv0123456789")
    assert not concerns_containers(msg[:10], foreign=False)
    assert not concerns_containers(struct.pack("=IHHII", 0, 16, 0, 0, 0), foreign=False)
    assert link_name(msg[:36] + struct.pack("=HH", 0, 3)) is None


def test_a_message_longer_than_the_batch_ends_the_reading() -> None:
    msg = link(16, "cv0123456789")
    assert not concerns_containers(msg[:20], foreign=False)
    assert not concerns_containers(link(16, "eth0") + msg[:20], foreign=False)
