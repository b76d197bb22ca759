"""The periodic check of ``bridge cove_guard`` against the kernel, with the
real nft: a table as recorded is left alone, an entry deleted by hand is
put back. (nft 1.0.6 cannot print this table as JSON, so a check that
read the whole table found nothing and rebuilt it on every pass.)"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from cove.datapath import nftlist
from cove.datapath.libnft import open_nft
from cove.datapath.nftables import Nft
from cove.runtime import guard
from cove.runtime.plan import WantedContainer, WantedLink
from cove.runtime.portguard import PortGuard

pytestmark = pytest.mark.root


class Counting:
    """The in-process nft, counting whole-table replacements."""

    def __init__(self) -> None:
        self.nft = open_nft()
        self.replaced = 0

    def transaction(self, commands: Any) -> None:
        self.nft.transaction(commands)

    def replace_table(self, family: str, name: str, objects: Any) -> None:
        self.replaced += 1
        self.nft.replace_table(family, name, objects)

    def delete_table(self, family: str, name: str) -> None:
        self.nft.delete_table(family, name)


def link(n: int) -> WantedLink:
    return WantedLink(
        f"e{n}", f"cv00000000a{n}", "eth0", f"0a:58:0a:59:00:0{n}", "cv-n", 1500,
        (ipaddress.ip_interface(f"10.89.0.{n}/24"), ipaddress.ip_interface(f"fd00:89::{n}/64")),
    )  # fmt: skip


@pytest.fixture
def nft(hostns: str) -> Iterator[Counting]:
    counting = Counting()
    try:
        yield counting
    finally:
        counting.delete_table(guard.FAMILY, guard.TABLE)
        counting.nft.close()


def test_a_forced_check_rebuilds_only_a_table_that_differs(nft: Counting) -> None:
    want = [WantedContainer("c1", (link(1), link(2))), WantedContainer("c2", (link(3),))]
    pg = PortGuard(nft, Nft(), lambda: want)
    pg.sync(want, force=True)
    assert nft.replaced == 1
    assert set(Nft().list_set(guard.FAMILY, guard.TABLE, "ports") or []) == set(pg.ports)
    pg.sync(want, force=True)  # the kernel has what was recorded
    assert nft.replaced == 1
    subprocess.run(
        ["nft", "delete", "element", guard.FAMILY, guard.TABLE, "ports", "{ cv00000000a2 }"],
        check=True,
    )
    pg.sync(want, force=True)
    assert nft.replaced == 2
    assert "cv00000000a2" in (Nft().list_set(guard.FAMILY, guard.TABLE, "ports") or [])
    assert Nft().list_set(guard.FAMILY, guard.TABLE, "nosuchset") is None
    assert Nft().has_table(guard.FAMILY, guard.TABLE)
    nft.delete_table(guard.FAMILY, guard.TABLE)
    assert not Nft().has_table(guard.FAMILY, guard.TABLE)
    assert Nft().list_set(guard.FAMILY, guard.TABLE, "ports") is None


def test_tables_are_listed_by_netlink_as_nft_lists_them(hostns: str) -> None:
    made = [("bridge", "cove_t1"), ("inet", "cove_t2"), ("ip6", "other_t3"), ("netdev", "x")]
    try:
        for family, name in made:
            subprocess.run(["nft", "add", "table", family, name], check=True)
        out = subprocess.run(
            ["nft", "-j", "list", "tables"], capture_output=True, text=True, check=True
        ).stdout
        listed = {
            (o["table"]["family"], o["table"]["name"])
            for o in json.loads(out)["nftables"]
            if "table" in o
        }
        assert set(made) <= listed
        assert set(nftlist.list_tables()) == listed
        assert set(Nft().tables()) == {("bridge", "cove_t1"), ("inet", "cove_t2")}
    finally:
        for family, name in made:
            subprocess.run(["nft", "delete", "table", family, name], check=False)
