"""Traffic counters of this namespace's links, from the kernel (one netlink
dump of ``IFLA_STATS64``), for per-endpoint metrics."""

from __future__ import annotations

from dataclasses import dataclass

from pyroute2 import IPRoute

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
