"""What the agent observes for ``/metrics`` and ``cove stats``: each
endpoint's traffic from its host-side veth's kernel counters, each health
check's status from the registry, and the connections through each VIP by
backend from conntrack."""

from __future__ import annotations

import json
import logging

from cove.api.metrics import (
    CheckState,
    EndpointTraffic,
    Series,
    check_series,
    traffic_series,
)
from cove.datapath.stats import link_counters, vip_connections
from cove.errors import DatapathError
from cove.lb.vips import VipService
from cove.model import ENDPOINTS, Endpoint
from cove.registry.keys import CHECKS, NODE_CHECKS
from cove.store.base import Store

log = logging.getLogger(__name__)


def endpoint_traffic(store: Store) -> list[EndpointTraffic]:
    """Every endpoint of this host's namespace with its counters, seen from
    the container: what its host veth received, the container sent."""
    try:
        counters = link_counters()
    except DatapathError as exc:
        log.warning("%s", exc)
        return []
    out: list[EndpointTraffic] = []
    for kv in store.range(ENDPOINTS).kvs:
        try:
            ep = Endpoint.from_json(json.loads(kv.value))
        except (ValueError, KeyError):
            continue
        c = counters.get(ep.host_veth)
        if c is None:  # another host's endpoint, or not attached yet
            continue
        out.append(
            EndpointTraffic(
                container=ep.container_name,
                network=ep.network,
                endpoint=ep.id,
                interface=ep.host_veth,
                in_bytes=c.tx_bytes,
                out_bytes=c.rx_bytes,
                in_packets=c.tx_packets,
                out_packets=c.rx_packets,
                in_dropped=c.tx_dropped,
                out_dropped=c.rx_dropped,
            )
        )
    return out


def check_states(store: Store) -> list[CheckState]:
    out: list[CheckState] = []
    for prefix in (CHECKS, NODE_CHECKS):
        for kv in store.range(prefix).kvs:
            try:
                data = json.loads(kv.value)
            except ValueError:
                continue
            out.append(
                CheckState(
                    node=str(data.get("Node") or ""),
                    service=str(data.get("ServiceName") or ""),
                    service_id=str(data.get("ServiceID") or ""),
                    check=str(data.get("CheckID") or ""),
                    status=str(data.get("Status") or ""),
                )
            )
    return out


def vip_series(vips: VipService) -> list[Series]:
    """Connections through each VIP by backend, as conntrack tracks them
    (open ones and those closing)."""
    by_address = {str(v.address): v.service for v in vips.list()}
    try:
        flows = vip_connections(by_address)
    except DatapathError as exc:
        log.warning("%s", exc)
        return []
    return [
        Series(
            "cove_vip_backend_connections",
            "Connections conntrack tracks through a VIP, by the backend they go to.",
            float(count),
            {
                "service": by_address.get(f.vip, ""),
                "vip": f.vip,
                "backend": f.backend,
                "backend_port": str(f.backend_port),
                "protocol": f.proto,
            },
        )
        for f, count in sorted(flows.items(), key=lambda item: (item[0].vip, item[0].backend))
    ]


def series(store: Store, vips: VipService) -> list[Series]:
    """Every labelled series this module observes, for ``Metrics.add``."""
    return (
        traffic_series(endpoint_traffic(store))
        + check_series(check_states(store))
        + vip_series(vips)
    )
