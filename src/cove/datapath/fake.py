"""A datapath that keeps kernel state in memory and records every operation,
so reconcile logic is tested without root."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from cove.datapath.base import BridgeState, Interface, Observed
from cove.errors import DatapathError
from cove.model import IPNetwork


class FakeDatapath:
    def __init__(self, host: Sequence[IPNetwork] = ()) -> None:
        self.bridges: dict[str, BridgeState] = {}
        self.tables: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
        self.ops: list[tuple[Any, ...]] = []
        self.forwarding = False
        self.host = list(host)
        self.fail_on: set[str] = set()  # operation names that raise

    def _record(self, *op: Any) -> None:
        if op[0] in self.fail_on:
            raise DatapathError(f"injected failure in {op[0]}")
        self.ops.append(op)

    def observe(self) -> Observed:
        return Observed(bridges=dict(self.bridges), nft_tables=frozenset(self.tables))

    def host_networks(self) -> Sequence[IPNetwork]:
        return list(self.host)

    def create_bridge(self, name: str, mtu: int) -> None:
        self._record("create_bridge", name, mtu)
        if name in self.bridges:
            raise DatapathError(f"link {name} exists")
        self.bridges[name] = BridgeState(name=name, mtu=mtu, up=False)

    def delete_link(self, name: str) -> None:
        self._record("delete_link", name)
        self.bridges.pop(name, None)

    def set_mtu(self, name: str, mtu: int) -> None:
        self._record("set_mtu", name, mtu)
        self.bridges[name] = replace(self._need(name), mtu=mtu)

    def set_up(self, name: str) -> None:
        self._record("set_up", name)
        self.bridges[name] = replace(self._need(name), up=True)

    def add_address(self, name: str, address: Interface) -> None:
        self._record("add_address", name, address)
        br = self._need(name)
        self.bridges[name] = replace(br, addresses=br.addresses | {address})

    def delete_address(self, name: str, address: Interface) -> None:
        self._record("delete_address", name, address)
        br = self._need(name)
        self.bridges[name] = replace(br, addresses=br.addresses - {address})

    def replace_table(self, family: str, name: str, objects: Sequence[Mapping[str, Any]]) -> None:
        self._record("replace_table", family, name)
        self.tables[(family, name)] = list(objects)

    def delete_table(self, family: str, name: str) -> None:
        self._record("delete_table", family, name)
        self.tables.pop((family, name), None)

    def enable_forwarding(self) -> None:
        self._record("enable_forwarding")
        self.forwarding = True

    def _need(self, name: str) -> BridgeState:
        try:
            return self.bridges[name]
        except KeyError:
            raise DatapathError(f"link {name} does not exist") from None
