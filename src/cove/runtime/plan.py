"""Reconcile container networking (pure): from the endpoints the store wants
and the namespaces and veths the kernel has, the operations to run.

A link that is half made (host veth without its peer, peer without the
bridge, addresses missing) is configured or rebuilt, and anything cove owns
that the store does not want (namespace files, ``cv`` veths, extra links
inside a container) is removed, so a crash at any point converges.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from cove.datapath.base import Interface, ObservedContainers


@dataclass(frozen=True, slots=True)
class WantedLink:
    endpoint_id: str
    host_veth: str
    interface: str
    mac: str
    bridge: str
    mtu: int
    addresses: tuple[Interface, ...]


@dataclass(frozen=True, slots=True)
class WantedContainer:
    id: str
    links: tuple[WantedLink, ...] = ()
    gateway4: ipaddress.IPv4Address | None = None
    gateway6: ipaddress.IPv6Address | None = None


@dataclass(frozen=True, slots=True)
class CreateNetns:
    container_id: str


@dataclass(frozen=True, slots=True)
class DeleteNetns:
    container_id: str


@dataclass(frozen=True, slots=True)
class AddVeth:
    """A new veth pair, configured (up, addresses) as it is made."""

    container_id: str
    link: WantedLink


@dataclass(frozen=True, slots=True)
class DeleteVeth:
    name: str


@dataclass(frozen=True, slots=True)
class DeleteInside:
    container_id: str
    interface: str


@dataclass(frozen=True, slots=True)
class Configure:
    container_id: str
    link: WantedLink


@dataclass(frozen=True, slots=True)
class SetRoutes:
    container_id: str
    gateway4: ipaddress.IPv4Address | None
    gateway6: ipaddress.IPv6Address | None


Op = CreateNetns | DeleteNetns | AddVeth | DeleteVeth | DeleteInside | Configure | SetRoutes


def plan(
    wanted: Iterable[WantedContainer],
    observed: ObservedContainers,
    netns_files: Iterable[str],
    *,
    only: str | None = None,
) -> list[Op]:
    """Operations that make the kernel match ``wanted``. With ``only`` (a
    container id), only that container is brought in line and nothing is
    removed elsewhere (the fast path of ``run`` and ``connect``)."""
    want = {c.id: c for c in wanted}
    ops: list[Op] = []
    wanted_veths = {link.host_veth for c in want.values() for link in c.links}
    if only is None:
        for cid in sorted(set(netns_files) - set(want)):
            ops.append(DeleteNetns(cid))
        for name in sorted(set(observed.veths) - wanted_veths):
            ops.append(DeleteVeth(name))
    for cid in sorted(want):
        if only is not None and cid != only:
            continue
        ops.extend(_container(want[cid], observed))
    return ops


def _container(c: WantedContainer, observed: ObservedContainers) -> list[Op]:
    ops: list[Op] = []
    inside = observed.netns.get(c.id)
    if inside is None:
        ops.append(CreateNetns(c.id))
        for link in c.links:
            if link.host_veth in observed.veths:
                ops.append(DeleteVeth(link.host_veth))
            ops.append(AddVeth(c.id, link))
        if c.gateway4 or c.gateway6:
            ops.append(SetRoutes(c.id, c.gateway4, c.gateway6))
        return ops
    wanted_ifaces = {link.interface for link in c.links}
    for name in sorted(set(inside.links) - wanted_ifaces):
        ops.append(DeleteInside(c.id, name))
    for link in c.links:
        host = observed.veths.get(link.host_veth)
        peer = inside.links.get(link.interface)
        whole = (
            host is not None
            and peer is not None
            and host.master == link.bridge
            and peer.mac.lower() == link.mac.lower()
        )
        if not whole:
            if host is not None:
                ops.append(DeleteVeth(link.host_veth))
            if peer is not None:
                ops.append(DeleteInside(c.id, link.interface))
            ops.append(AddVeth(c.id, link))
            continue
        assert peer is not None and host is not None
        if (
            not peer.up
            or not host.up
            or peer.mtu != link.mtu
            or peer.addresses != frozenset(link.addresses)
        ):
            ops.append(Configure(c.id, link))
    rebuilt = any(isinstance(op, AddVeth) for op in ops)
    if rebuilt or (inside.gateway4, inside.gateway6) != (c.gateway4, c.gateway6):
        ops.append(SetRoutes(c.id, c.gateway4, c.gateway6))
    return ops
