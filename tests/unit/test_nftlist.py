"""The nfnetlink table dump's answer, parsed without a socket."""

from __future__ import annotations

import struct

import pytest

from cove.datapath.nftlist import parse_tables


def table(family: int, name: str) -> bytes:
    raw = name.encode() + b"\0"
    attr = struct.pack("=HH", 4 + len(raw), 1) + raw
    attr += b"\0" * (-len(attr) % 4)
    flags = struct.pack("=HHI", 8, 2, 0)  # NFTA_TABLE_FLAGS, before the name
    body = struct.pack("=BBH", family, 0, 0) + flags + attr
    return struct.pack("=IHHII", 16 + len(body), (10 << 8) | 0, 2, 1, 0) + body


def done() -> bytes:
    return struct.pack("=IHHII", 20, 3, 2, 1, 0) + struct.pack("=i", 0)


def test_tables_of_each_family_then_the_end() -> None:
    batch = table(7, "cove_guard") + table(1, "cove") + table(10, "x")
    assert parse_tables(batch) == (
        [("bridge", "cove_guard"), ("inet", "cove"), ("ip6", "x")],
        False,
    )
    assert parse_tables(table(2, "nat") + done()) == ([("ip", "nat")], True)


def test_an_error_answer_raises() -> None:
    err = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -1) + bytes(16)
    with pytest.raises(OSError):
        parse_tables(err)


def test_a_truncated_message_ends_the_batch() -> None:
    assert parse_tables(table(7, "cove_guard")[:30]) == ([], False)
