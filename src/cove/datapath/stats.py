"""What the kernel counts, for metrics: traffic of this namespace's links
(one netlink dump of ``IFLA_STATS64``) and the connections conntrack holds
through each VIP, by the backend they were sent to."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass

from pyroute2 import Conntrack, IPRoute

from cove.errors import DatapathError


@dataclass(frozen=True, slots=True)
class LinkCounters:
    """What one link sent and received, as the kernel counts it."""

    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    rx_dropped: int
    tx_dropped: int


def link_counters() -> dict[str, LinkCounters]:
    """Counters of every link by name. Raises ``DatapathError`` when
    netlink cannot be asked."""
    out: dict[str, LinkCounters] = {}
    try:
        with IPRoute() as ipr:
            for link in ipr.get_links():
                name = link.get_attr("IFLA_IFNAME")
                st = link.get_attr("IFLA_STATS64")
                if not name or not st:
                    continue
                out[str(name)] = LinkCounters(
                    int(st["rx_bytes"]),
                    int(st["tx_bytes"]),
                    int(st["rx_packets"]),
                    int(st["tx_packets"]),
                    int(st["rx_dropped"]),
                    int(st["tx_dropped"]),
                )
    except OSError as exc:
        raise DatapathError(f"cannot read link counters over netlink: {exc}") from exc
    return out


@dataclass(frozen=True, slots=True)
class VipFlow:
    """Connections conntrack holds from clients to ``vip``:``vip_port``
    that the VIP's DNAT sent to ``backend``:``backend_port``."""

    vip: str
    vip_port: int
    backend: str
    backend_port: int
    proto: str


_PROTOS = {6: "tcp", 17: "udp"}


def vip_connections(vips: Collection[str]) -> dict[VipFlow, int]:
    """Tracked connections to any of ``vips`` (addresses), by backend: the
    reply direction of a DNATed connection comes from the backend. Raises
    ``DatapathError`` when conntrack cannot be asked."""
    if not vips:
        return {}
    wanted = {str(ipaddress.ip_address(v)) for v in vips}
    out: dict[VipFlow, int] = {}
    try:
        with Conntrack() as ct:
            for entry in ct.dump_entries():
                orig, reply = entry.tuple_orig, entry.tuple_reply
                if orig.daddr not in wanted or orig.proto not in _PROTOS:
                    continue
                flow = VipFlow(
                    str(orig.daddr),
                    int(orig.dport or 0),
                    str(reply.saddr),
                    int(reply.sport or 0),
                    _PROTOS[orig.proto],
                )
                out[flow] = out.get(flow, 0) + 1
    except OSError as exc:
        raise DatapathError(f"cannot read conntrack over netlink: {exc}") from exc
    return out
