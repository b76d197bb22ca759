"""Datapaths that keep kernel state in memory and record every operation,
so reconcile logic is tested without root: ``FakeDatapath`` for networks,
``FakeContainerDatapath`` for container namespaces and veth pairs,
``FakeNft`` for cove's nftables tables.

Each has ``ops`` (what was asked, in order) and ``fail_on`` (names of
operations that raise ``DatapathError`` before doing anything).
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cove.datapath.base import (
    BridgeState,
    ContainerDatapath,
    FdbEntry,
    Gateway,
    HostVeth,
    InsideLink,
    Interface,
    NeighEntry,
    NetnsState,
    NetworkDatapath,
    NftLister,
    Observed,
    ObservedContainers,
    ObservedOverlay,
    OverlayDatapath,
    VxlanState,
)
from cove.errors import DatapathError, DatapathGone
from cove.model import IPNetwork


class FakeDatapath:
    def __init__(self, host: Sequence[IPNetwork] = ()) -> None:
        self.bridges: dict[str, BridgeState] = {}
        self.vxlans: dict[str, VxlanState] = {}
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

    def observe_overlay(self) -> ObservedOverlay:
        return ObservedOverlay(
            bridges=dict(self.bridges), vxlans=dict(self.vxlans), nft_tables=frozenset(self.tables)
        )

    def create_vxlan(
        self, name: str, vni: int, local: str, port: int, mtu: int, master: str
    ) -> None:
        self._record("create_vxlan", name, vni, local, port, mtu, master)
        if name in self.vxlans:
            raise DatapathError(f"link {name} exists")
        self._need(master)
        self.vxlans[name] = VxlanState(
            name, vni, local, port, mtu, master, up=True, learning=False, proxy=True
        )

    def update_fdb(self, name: str, add: Sequence[FdbEntry], remove: Sequence[FdbEntry]) -> None:
        self._record("update_fdb", name, tuple(add), tuple(remove))
        vx = self._need_vxlan(name)
        macs = {e.mac for e in add}
        keep = {e for e in vx.fdb if e not in remove and e.mac not in macs}
        self.vxlans[name] = replace(vx, fdb=frozenset(keep | set(add)))

    def update_neigh(
        self, name: str, add: Sequence[NeighEntry], remove: Sequence[NeighEntry]
    ) -> None:
        self._record("update_neigh", name, tuple(add), tuple(remove))
        vx = self._need_vxlan(name)
        gone = {e.address for e in remove} | {e.address for e in add}
        keep = {e for e in vx.neigh if e.address not in gone}
        self.vxlans[name] = replace(vx, neigh=frozenset(keep | set(add)))

    def _need_vxlan(self, name: str) -> VxlanState:
        try:
            return self.vxlans[name]
        except KeyError:
            raise DatapathGone(f"link {name} does not exist") from None

    def create_bridge(self, name: str, mtu: int) -> None:
        self._record("create_bridge", name, mtu)
        if name in self.bridges:
            raise DatapathError(f"link {name} exists")
        self.bridges[name] = BridgeState(name=name, mtu=mtu, up=False)

    def delete_link(self, name: str) -> None:
        self._record("delete_link", name)
        self.bridges.pop(name, None)
        self.vxlans.pop(name, None)

    def set_mtu(self, name: str, mtu: int) -> None:
        self._record("set_mtu", name, mtu)
        if name in self.vxlans:
            self.vxlans[name] = replace(self.vxlans[name], mtu=mtu)
            return
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
            raise DatapathGone(f"link {name} does not exist") from None


class FakeContainerDatapath:
    """Namespaces, veth pairs and retired pairs as ``NetnsDatapath`` keeps
    them in the kernel. ``bridges`` are those ``add_veth`` and ``attach``
    may plug into. ``attach`` fails after making the pair when
    ``"attach.configure"`` is in ``fail_on`` (once), and then removes it, as
    the real one does. ``crash()`` drops namespaces without running anything,
    as a reboot or an unmount from outside would."""

    def __init__(self, bridges: Iterable[str] = (), netns_dir: Path = Path("/fake/netns")) -> None:
        self.bridges = set(bridges)
        self.netns_dir = netns_dir
        self.namespaces: dict[str, dict[str, InsideLink]] = {}  # container id -> links
        self.routes: dict[str, tuple[ipaddress.IPv4Address | None, ipaddress.IPv6Address | None]]
        self.routes = {}
        self.veths: dict[str, HostVeth] = {}  # host side -> state
        self.peers: dict[str, tuple[str, str]] = {}  # host side -> (container id, inside name)
        self.retired: set[str] = set()
        self.sysctls: dict[str, str] = {}
        self.ops: list[tuple[Any, ...]] = []
        self.fail_on: set[str] = set()
        self.closed = False
        # Namespaces other runtimes own, by path (``create_netns(existing=)``).
        self.foreign: dict[Path, dict[str, InsideLink]] = {}

    def _record(self, *op: Any) -> None:
        if op[0] in self.fail_on:
            raise DatapathError(f"injected failure in {op[0]}")
        self.ops.append(op)

    def op_names(self) -> list[str]:
        return [op[0] for op in self.ops]

    # -- namespaces ----------------------------------------------------------

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        yield

    def netns_path(self, container_id: str) -> Path:
        return self.netns_dir / container_id

    def has_netns(self, container_id: str) -> bool:
        return container_id in self.namespaces

    def list_netns(self) -> list[str]:
        return sorted(self.namespaces)

    def create_netns(self, container_id: str, existing: Path | None = None) -> Path:
        self._record("create_netns", container_id)
        if container_id not in self.namespaces and existing is not None:
            if existing not in self.foreign:
                raise DatapathError(f"{existing} is not a network namespace")
            self.namespaces[container_id] = self.foreign[existing]  # the same links
            return self.netns_path(container_id)
        self.namespaces.setdefault(container_id, {})
        return self.netns_path(container_id)

    def delete_netns(self, container_id: str) -> None:
        self._record("delete_netns", container_id)
        self._drop_netns(container_id)

    def crash(self, container_id: str) -> None:
        """The namespace is gone (its pairs with it), nothing recorded."""
        self._drop_netns(container_id)

    def _drop_netns(self, container_id: str) -> None:
        links = self.namespaces.pop(container_id, None)
        if any(links is ns for ns in self.foreign.values()):
            return  # its owner keeps it, and the links in it
        self.routes.pop(container_id, None)
        for host, (cid, _inside) in list(self.peers.items()):
            if cid == container_id:
                self._drop_pair(host)

    # -- observe -------------------------------------------------------------

    def observe(
        self, container_ids: Sequence[str] | None = None, veths: Sequence[str] | None = None
    ) -> ObservedContainers:
        ids = self.list_netns() if container_ids is None else container_ids
        netns = {
            cid: NetnsState(dict(self.namespaces[cid]), *self.routes.get(cid, (None, None)))
            for cid in ids
            if cid in self.namespaces
        }
        names = self.veths if veths is None else [n for n in veths if n in self.veths]
        return ObservedContainers(netns=netns, veths={n: self.veths[n] for n in names})

    # -- change --------------------------------------------------------------

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
        self._record("attach", container_id, host, inside, bridge)
        self._make_pair(container_id, host, inside, mac, mtu, bridge)
        if "attach.configure" in self.fail_on:
            self.fail_on.discard("attach.configure")  # once
            self._drop_pair(host)
            raise DatapathError(f"injected failure configuring {inside}")
        links = self.namespaces[container_id]
        links[inside] = replace(links[inside], up=True, addresses=frozenset(addresses))
        gw4, gw6 = self.routes.get(container_id, (None, None))
        for gw in gateways:
            if isinstance(gw, ipaddress.IPv4Address):
                gw4 = gw
            else:
                gw6 = gw
        self.routes[container_id] = (gw4, gw6)

    def _make_pair(
        self, container_id: str, host: str, inside: str, mac: str, mtu: int, bridge: str
    ) -> None:
        links = self._need_netns(container_id)
        if bridge not in self.bridges:
            raise DatapathGone(f"bridge {bridge} does not exist", bridge=bridge)
        if host in self.veths or inside in links:
            raise DatapathError(f"link {host} or {inside} exists", link=host)
        self.veths[host] = HostVeth(name=host, master=bridge, up=True, mtu=mtu)
        self.peers[host] = (container_id, inside)
        links[inside] = InsideLink(name=inside, mtu=mtu, up=False, mac=mac)

    def configure(
        self,
        container_id: str,
        name: str,
        addresses: Sequence[Interface],
        mtu: int,
    ) -> None:
        self._record("configure", container_id, name, tuple(addresses))
        links = self._need_netns(container_id)
        if name not in links:
            raise DatapathGone(f"{name} missing in container {container_id}")
        links[name] = replace(links[name], mtu=mtu, up=True, addresses=frozenset(addresses))

    def set_default_routes(
        self,
        container_id: str,
        gateway4: ipaddress.IPv4Address | None,
        gateway6: ipaddress.IPv6Address | None,
    ) -> None:
        self._record("set_default_routes", container_id, gateway4, gateway6)
        self._need_netns(container_id)
        self.routes[container_id] = (gateway4, gateway6)

    def set_up(self, name: str) -> None:
        self._record("set_up", name)
        if name not in self.veths:
            raise DatapathGone(f"cannot set {name} up: no such link", link=name)
        self.veths[name] = replace(self.veths[name], up=True)

    def delete_inside(self, container_id: str, name: str) -> None:
        self._record("delete_inside", container_id, name)
        links = self._need_netns(container_id)
        links.pop(name, None)
        for host, peer in list(self.peers.items()):
            if peer == (container_id, name):
                self._drop_pair(host)

    def delete_link(self, name: str) -> None:
        self._record("delete_link", name)
        self._drop_pair(name)

    def retire_veth(self, container_id: str, host: str) -> None:
        self._record("retire_veth", container_id, host)
        if host not in self.veths:
            return
        self.veths[host] = replace(self.veths[host], up=False)
        cid, inside = self.peers[host]
        links = self.namespaces.get(cid)
        if links is not None and inside in links:
            links[host] = replace(links.pop(inside), name=host, up=False)
            self.peers[host] = (cid, host)
        self.retired.add(host)

    def reap(self) -> None:
        self._record("reap")
        for host in sorted(self.retired):
            self._drop_pair(host)

    def set_sysctl(self, path: str, value: str) -> None:
        self._record("set_sysctl", path, value)
        self.sysctls[path] = value

    def close(self) -> None:
        self.closed = True

    def _drop_pair(self, host: str) -> None:
        self.veths.pop(host, None)
        self.retired.discard(host)
        peer = self.peers.pop(host, None)
        if peer is not None and peer[0] in self.namespaces:
            self.namespaces[peer[0]].pop(peer[1], None)

    def _need_netns(self, container_id: str) -> dict[str, InsideLink]:
        try:
            return self.namespaces[container_id]
        except KeyError:
            raise DatapathGone(f"namespace of container {container_id} is gone") from None


class FakeNft:
    """cove's nftables tables as whole-table replacements; the commands of
    ``transaction`` are recorded, not interpreted."""

    def __init__(self) -> None:
        self.tables_: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.transactions: list[list[Mapping[str, Any]]] = []
        self.fail_on: set[str] = set()

    def transaction(self, commands: Sequence[Mapping[str, Any]]) -> None:
        if "transaction" in self.fail_on:
            raise DatapathError("injected failure in transaction")
        if commands:
            self.transactions.append(list(commands))

    def replace_table(self, family: str, name: str, objects: Sequence[Mapping[str, Any]]) -> None:
        if "replace_table" in self.fail_on:
            raise DatapathError("injected failure in replace_table")
        self.tables_[(family, name)] = [dict(o) for o in objects]

    def delete_table(self, family: str, name: str) -> None:
        self.tables_.pop((family, name), None)

    def tables(self) -> list[tuple[str, str]]:
        return sorted(self.tables_)

    def list_table(self, family: str, name: str) -> list[dict[str, Any]]:
        return list(self.tables_.get((family, name), []))

    def has_table(self, family: str, name: str) -> bool:
        return (family, name) in self.tables_

    def list_set(self, family: str, table: str, name: str) -> list[Any] | None:
        """The set's elements, inline or added by ``element`` objects."""
        objs = self.tables_.get((family, table), [])
        if not any((o.get("set") or {}).get("name") == name for o in objs):
            return None
        return [
            e
            for o in objs
            for body in (o.get("set"), o.get("element"))
            if body and body.get("name") == name
            for e in body.get("elem", [])
        ]

    def close(self) -> None:
        pass


if TYPE_CHECKING:  # mypy checks that each fake has its protocol's shape
    _network: NetworkDatapath = FakeDatapath()
    _overlay: OverlayDatapath = FakeDatapath()
    _containers: ContainerDatapath = FakeContainerDatapath()
    _nft: NftLister = FakeNft()
