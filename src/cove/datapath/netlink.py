"""The network datapath on a real kernel: bridges and addresses through
netlink (pyroute2), nftables through ``Nft``, forwarding through /proc/sys."""

from __future__ import annotations

import errno
import ipaddress
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cove.datapath.base import BRIDGE_PREFIX, BridgeState, Interface, Observed
from cove.datapath.nftables import Nft
from cove.errors import DatapathError, Unavailable
from cove.model import IPNetwork

log = logging.getLogger(__name__)

_AF_INET6 = 10
_IFF_UP = 1


class NetlinkDatapath:
    """One netlink socket, used under a lock; the reconciler is its only caller."""

    def __init__(self, nft: Nft | None = None, proc_sys: Path = Path("/proc/sys")) -> None:
        try:
            self._ipr = IPRoute()
        except OSError as exc:
            raise Unavailable(f"netlink is not available: {exc}") from exc
        self._nft = nft or Nft()
        self._proc_sys = proc_sys
        self._lock = threading.Lock()

    def close(self) -> None:
        self._ipr.close()

    # -- observe -----------------------------------------------------------

    def observe(self) -> Observed:
        with self._lock:
            links = self._ipr.get_links()
            addrs = self._ipr.get_addr()
        by_index: dict[int, set[Interface]] = {}
        for a in addrs:
            addr = a.get_attr("IFA_ADDRESS")
            if addr is None or (a["family"] == _AF_INET6 and addr.startswith("fe80")):
                continue
            iface = ipaddress.ip_interface(f"{addr}/{a['prefixlen']}")
            by_index.setdefault(a["index"], set()).add(iface)
        bridges: dict[str, BridgeState] = {}
        for link in links:
            name = link.get_attr("IFLA_IFNAME")
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info else None
            if not name or not name.startswith(BRIDGE_PREFIX) or kind != "bridge":
                continue
            bridges[name] = BridgeState(
                name=name,
                mtu=int(link.get_attr("IFLA_MTU")),
                up=bool(link["flags"] & _IFF_UP),
                addresses=frozenset(by_index.get(link["index"], set())),
            )
        return Observed(bridges=bridges, nft_tables=frozenset(self._nft.tables()))

    def host_networks(self) -> Sequence[IPNetwork]:
        with self._lock:
            links = {
                link["index"]: link.get_attr("IFLA_IFNAME") or "" for link in self._ipr.get_links()
            }
            routes = list(self._ipr.get_routes(family=2)) + list(
                self._ipr.get_routes(family=_AF_INET6)
            )
        out: list[IPNetwork] = []
        for r in routes:
            dst = r.get_attr("RTA_DST")
            oif = links.get(r.get_attr("RTA_OIF") or -1, "")
            if dst is None or r["dst_len"] == 0 or oif.startswith(BRIDGE_PREFIX):
                continue
            if r.get_attr("RTA_TABLE") not in (None, 254):  # main table only
                continue
            net = ipaddress.ip_network(f"{dst}/{r['dst_len']}", strict=False)
            if net.is_link_local or net.is_multicast:
                continue
            out.append(net)
        return out

    # -- links -------------------------------------------------------------

    def create_bridge(self, name: str, mtu: int) -> None:
        self._call("create bridge " + name, "add", ifname=name, kind="bridge", mtu=mtu)

    def delete_link(self, name: str) -> None:
        idx = self._index(name)
        if idx is not None:
            self._call("delete link " + name, "del", index=idx, ignore=(errno.ENODEV,))

    def set_mtu(self, name: str, mtu: int) -> None:
        self._call(f"set mtu of {name}", "set", index=self._need(name), mtu=mtu)

    def set_up(self, name: str) -> None:
        self._call(f"bring {name} up", "set", index=self._need(name), state="up")

    def add_address(self, name: str, address: Interface) -> None:
        idx = self._need(name)
        try:
            with self._lock:
                self._ipr.addr(
                    "add", index=idx, address=str(address.ip), prefixlen=address.network.prefixlen
                )
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise DatapathError(f"cannot add {address} to {name}: {exc}") from exc

    def delete_address(self, name: str, address: Interface) -> None:
        idx = self._index(name)
        if idx is None:
            return
        try:
            with self._lock:
                self._ipr.addr(
                    "del", index=idx, address=str(address.ip), prefixlen=address.network.prefixlen
                )
        except NetlinkError as exc:
            if exc.code not in (errno.EADDRNOTAVAIL, errno.ENODEV):
                raise DatapathError(f"cannot remove {address} from {name}: {exc}") from exc

    # -- nftables and sysctls ----------------------------------------------

    def replace_table(self, family: str, name: str, objects: Sequence[Mapping[str, Any]]) -> None:
        self._nft.replace_table(family, name, objects)

    def delete_table(self, family: str, name: str) -> None:
        self._nft.delete_table(family, name)

    def enable_forwarding(self) -> None:
        for rel in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
            path = self._proc_sys / rel
            try:
                if path.read_text().strip() != "1":
                    path.write_text("1\n")
            except OSError as exc:
                raise DatapathError(f"cannot enable forwarding ({rel}): {exc}") from exc

    # -- helpers -----------------------------------------------------------

    def _index(self, name: str) -> int | None:
        with self._lock:
            found = self._ipr.link_lookup(ifname=name)
        return int(found[0]) if found else None

    def _need(self, name: str) -> int:
        idx = self._index(name)
        if idx is None:
            raise DatapathError(f"link {name} does not exist")
        return idx

    def _call(self, what: str, cmd: str, ignore: tuple[int, ...] = (), **kw: Any) -> None:
        try:
            with self._lock:
                self._ipr.link(cmd, **kw)
        except NetlinkError as exc:
            if exc.code in ignore:
                return
            raise DatapathError(f"cannot {what}: {exc}") from exc
