"""What the rest of cove may ask of the kernel, as protocols.

Only datapath modules touch the kernel; everything else sees these
protocols, and the agent's wiring chooses the classes behind them.

- ``NetworkDatapath``: a network's kernel side, a bridge named ``cv-<id>``
  carrying the gateway addresses, plus cove's nft table ``inet cove``
  (``netlink.NetlinkDatapath``).
- ``ContainerDatapath``: container network namespaces and their veth pairs
  (``netns.NetnsDatapath``).
- ``NftTables`` / ``NftLister``: cove's own nftables tables, replaced
  atomically (``nftables.Nft``, ``libnft.LibNft``).

``fake.py`` keeps kernel state in memory and records operations, so
reconcile logic is tested without root.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cove.model import IPNetwork

BRIDGE_PREFIX = "cv-"

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Gateway = ipaddress.IPv4Address | ipaddress.IPv6Address

_HOST_VETH = re.compile(r"^cv[0-9a-f]{10}$")


def host_veth_name(endpoint_id: str) -> str:
    """Host-side veth names are ``cv`` + 10 hex digits of the endpoint id
    (12 bytes, and never ``cv-``, the bridges' prefix)."""
    return "cv" + endpoint_id[:10]


def is_host_veth(name: str) -> bool:
    return bool(_HOST_VETH.match(name))


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


# -- overlay networks -----------------------------------------------------

VXLAN_PREFIX = "cvx"
VXLAN_PORT = 4789  # IANA's VXLAN port


def vxlan_name(network_id: str) -> str:
    """An overlay network's VXLAN device: ``cvx`` + 12 characters of the
    network id (15 bytes; not ``cv-``, the bridges' prefix, nor a host veth's
    ``cv`` + hex digit)."""
    return VXLAN_PREFIX + network_id[:12]


@dataclass(frozen=True, slots=True)
class FdbEntry:
    """A remote container's MAC, reached through the host at ``dst``."""

    mac: str
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class NeighEntry:
    """A permanent neighbour: a remote container's address and MAC, so the
    VXLAN device answers ARP and ND for it on the spot."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    mac: str


@dataclass(frozen=True, slots=True)
class VxlanState:
    """A cove VXLAN device as the kernel has it."""

    name: str
    vni: int
    local: str
    port: int
    mtu: int
    master: str | None
    up: bool
    learning: bool
    proxy: bool
    fdb: frozenset[FdbEntry] = field(default_factory=frozenset)
    neigh: frozenset[NeighEntry] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class ObservedOverlay:
    """Cove's bridges and VXLAN devices, and its nft tables."""

    bridges: Mapping[str, BridgeState]
    vxlans: Mapping[str, VxlanState]
    nft_tables: frozenset[tuple[str, str]]


class OverlayDatapath(Protocol):
    """What an overlay network needs of a host's kernel. Every method that
    changes the kernel raises ``DatapathError`` when it cannot; removing
    something already gone is fine."""

    def observe_overlay(self) -> ObservedOverlay: ...

    def create_bridge(self, name: str, mtu: int) -> None: ...

    def create_vxlan(
        self, name: str, vni: int, local: str, port: int, mtu: int, master: str
    ) -> None:
        """A VXLAN device with learning off and ARP/ND proxy on (the proxy
        flag cannot be changed later), plugged into ``master`` and up."""
        ...

    def delete_link(self, name: str) -> None: ...

    def set_mtu(self, name: str, mtu: int) -> None: ...

    def set_up(self, name: str) -> None: ...

    def add_address(self, name: str, address: Interface) -> None: ...

    def delete_address(self, name: str, address: Interface) -> None: ...

    def update_fdb(self, name: str, add: Sequence[FdbEntry], remove: Sequence[FdbEntry]) -> None:
        """Add (or move) and remove forwarding entries of VXLAN device
        ``name`` in one batch."""
        ...

    def update_neigh(
        self, name: str, add: Sequence[NeighEntry], remove: Sequence[NeighEntry]
    ) -> None:
        """Add (or change) and remove permanent neighbours of ``name``."""
        ...

    def replace_table(
        self, family: str, name: str, objects: Sequence[Mapping[str, Any]]
    ) -> None: ...

    def delete_table(self, family: str, name: str) -> None: ...


# -- containers -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostVeth:
    name: str
    master: str | None
    up: bool
    mtu: int


@dataclass(frozen=True, slots=True)
class InsideLink:
    name: str
    mtu: int
    up: bool
    mac: str
    addresses: frozenset[Interface] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class NetnsState:
    """One container namespace as the kernel has it."""

    links: Mapping[str, InsideLink]
    gateway4: ipaddress.IPv4Address | None = None
    gateway6: ipaddress.IPv6Address | None = None


@dataclass(frozen=True, slots=True)
class ObservedContainers:
    netns: Mapping[str, NetnsState]  # container id -> namespace
    veths: Mapping[str, HostVeth]  # host-side name -> state


class ContainerDatapath(Protocol):
    """Container network namespaces and their veth pairs. Every method that
    changes the kernel raises ``DatapathError`` when it cannot."""

    def session(self) -> AbstractContextManager[None]:
        """Within the block, the calling thread may reuse kernel handles
        (one per namespace) instead of opening one per operation."""
        ...

    def netns_path(self, container_id: str) -> Path: ...

    def has_netns(self, container_id: str) -> bool: ...

    def list_netns(self) -> list[str]:
        """Ids of the containers whose namespace files cove keeps."""
        ...

    def create_netns(self, container_id: str, existing: Path | None = None) -> Path:
        """Create the container's namespace; an existing one is kept. With
        ``existing`` (the path of a namespace another runtime owns), the
        container's namespace is that one, addressed like any other."""
        ...

    def delete_netns(self, container_id: str) -> None: ...

    def observe(
        self, container_ids: Sequence[str] | None = None, veths: Sequence[str] | None = None
    ) -> ObservedContainers:
        """Everything cove owns, or only those namespaces and host links."""
        ...

    def attach(
        self,
        container_id: str,
        host: str,
        inside: str,
        mac: str,
        mtu: int,
        bridge: str,
        addresses: Sequence[Interface],
        gateways: Sequence[Gateway] = (),
    ) -> None:
        """A new veth pair, fully configured, without reading the kernel's
        state first. On failure nothing of it is left behind."""
        ...

    def configure(
        self,
        container_id: str,
        name: str,
        addresses: Sequence[Interface],
        mtu: int,
    ) -> None:
        """Make ``name`` in the container up with exactly ``addresses``."""
        ...

    def set_default_routes(
        self,
        container_id: str,
        gateway4: ipaddress.IPv4Address | None,
        gateway6: ipaddress.IPv6Address | None,
    ) -> None: ...

    def set_up(self, name: str) -> None:
        """Set a host-side link up."""
        ...

    def delete_inside(self, container_id: str, name: str) -> None:
        """Delete a link inside the container (its veth peer goes too)."""
        ...

    def delete_link(self, name: str) -> None:
        """Delete a host-side link; one already gone is fine."""
        ...

    def retire_veth(self, container_id: str, host: str) -> None:
        """Take a veth pair out of service at once; ``reap`` deletes it."""
        ...

    def reap(self) -> None:
        """Delete every retired veth pair."""
        ...

    def set_sysctl(self, path: str, value: str) -> None:
        """Write a host sysctl, e.g. ``net/ipv4/conf/<bridge>/route_localnet``."""
        ...

    def close(self) -> None: ...


# -- nftables --------------------------------------------------------------


class NftTables(Protocol):
    """Changes to cove's own nftables tables (never another program's)."""

    def transaction(self, commands: Sequence[Mapping[str, Any]]) -> None:
        """Run nft JSON commands as one atomic batch."""
        ...

    def replace_table(
        self, family: str, name: str, objects: Sequence[Mapping[str, Any]]
    ) -> None: ...

    def delete_table(self, family: str, name: str) -> None: ...


class NftLister(NftTables, Protocol):
    """``NftTables`` that can also read cove's tables back."""

    def tables(self) -> list[tuple[str, str]]: ...

    def list_table(self, family: str, name: str) -> list[dict[str, Any]]: ...

    def has_table(self, family: str, name: str) -> bool:
        """Whether one table is there (cheaper than ``tables()``)."""
        ...

    def list_set(self, family: str, table: str, name: str) -> list[Any] | None:
        """The elements of one set; None when it is not there."""
        ...
