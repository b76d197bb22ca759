"""The Datapath protocol for networks: what the reconciler may observe and do.

Only datapath modules touch the kernel. A network's kernel side is a bridge
named ``cv-<id>`` carrying the gateway addresses, plus cove's nft table
``inet cove`` (egress NAT and isolation). ``fake.py`` records operations so
reconcile logic is tested without root.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cove.model import IPNetwork

BRIDGE_PREFIX = "cv-"

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True, slots=True)
class BridgeState:
    """A cove bridge as the kernel has it."""

    name: str
    mtu: int
    up: bool
    addresses: frozenset[Interface] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class Observed:
    """What the kernel has now, limited to what cove owns."""

    bridges: Mapping[str, BridgeState]
    nft_tables: frozenset[tuple[str, str]]


class NetworkDatapath(Protocol):
    def observe(self) -> Observed: ...

    def host_networks(self) -> Sequence[IPNetwork]:
        """Routes and address subnets of the host that are not cove's own,
        so new subnets never overlap them."""
        ...

    def create_bridge(self, name: str, mtu: int) -> None: ...

    def delete_link(self, name: str) -> None: ...

    def set_mtu(self, name: str, mtu: int) -> None: ...

    def set_up(self, name: str) -> None: ...

    def add_address(self, name: str, address: Interface) -> None: ...

    def delete_address(self, name: str, address: Interface) -> None: ...

    def replace_table(
        self, family: str, name: str, objects: Sequence[Mapping[str, Any]]
    ) -> None: ...

    def delete_table(self, family: str, name: str) -> None: ...

    def enable_forwarding(self) -> None:
        """Turn on IPv4 and IPv6 forwarding in this namespace."""
        ...
