"""Prometheus text exposition at /metrics, and ``/api/stats`` (the same
per-endpoint and per-check figures as JSON, for ``cove stats``).

Each part of the agent registers a function returning its samples; nothing
is kept in module globals. A sample is either ``(name, help, value)`` (a
gauge without labels) or a ``Series`` with labels and a type; series of one
name share one ``# HELP``/``# TYPE`` header, as Prometheus expects.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cove.api import http as web

Sample = tuple[str, str, float]  # (name, help, value)


@dataclass(frozen=True, slots=True)
class Series:
    """One labelled sample; ``kind`` is ``gauge`` or ``counter``."""

    name: str
    help: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)
    kind: str = "gauge"


Source = Callable[[], Iterable[Sample | Series]]


@dataclass(frozen=True, slots=True)
class EndpointTraffic:
    """A container's traffic on one network, seen from the container
    (its host-side veth counts the other way round)."""

    container: str
    network: str
    endpoint: str
    interface: str
    in_bytes: int
    out_bytes: int
    in_packets: int
    out_packets: int
    in_dropped: int
    out_dropped: int

    def to_json(self) -> dict[str, Any]:
        return {
            "container": self.container,
            "network": self.network,
            "endpoint": self.endpoint,
            "interface": self.interface,
            "in_bytes": self.in_bytes,
            "out_bytes": self.out_bytes,
            "in_packets": self.in_packets,
            "out_packets": self.out_packets,
            "in_dropped": self.in_dropped,
            "out_dropped": self.out_dropped,
        }


@dataclass(frozen=True, slots=True)
class CheckState:
    node: str
    service: str
    service_id: str
    check: str
    status: str

    def to_json(self) -> dict[str, str]:
        return {
            "node": self.node,
            "service": self.service,
            "service_id": self.service_id,
            "check": self.check,
            "status": self.status,
        }


CHECK_STATUSES = ("passing", "warning", "critical", "maintenance")


def traffic_series(traffic: Iterable[EndpointTraffic]) -> list[Series]:
    out: list[Series] = []
    for t in traffic:
        labels = {"container": t.container, "network": t.network, "endpoint": t.endpoint}
        for name, help_text, value in (
            ("cove_endpoint_receive_bytes_total", "Bytes a container received.", t.in_bytes),
            ("cove_endpoint_transmit_bytes_total", "Bytes a container sent.", t.out_bytes),
            ("cove_endpoint_receive_packets_total", "Packets a container received.", t.in_packets),
            ("cove_endpoint_transmit_packets_total", "Packets a container sent.", t.out_packets),
            (
                "cove_endpoint_receive_drop_total",
                "Packets to a container dropped by the kernel.",
                t.in_dropped,
            ),
            (
                "cove_endpoint_transmit_drop_total",
                "Packets from a container dropped by the kernel.",
                t.out_dropped,
            ),
        ):
            out.append(Series(name, help_text, float(value), labels, "counter"))
    return out


def check_series(checks: Iterable[CheckState]) -> list[Series]:
    """One series per check and status, 1 for the status it has (the
    enum pattern Prometheus users alert on), and instances per service."""
    out: list[Series] = []
    instances: dict[str, set[str]] = {}
    critical: dict[str, set[str]] = {}
    for c in checks:
        labels = {"node": c.node, "service": c.service, "service_id": c.service_id}
        labels["check"] = c.check
        for status in CHECK_STATUSES:
            out.append(
                Series(
                    "cove_check_status",
                    "Health check status: 1 for the status the check has now.",
                    1.0 if c.status == status else 0.0,
                    {**labels, "status": status},
                )
            )
        if c.service:
            instances.setdefault(c.service, set()).add(f"{c.node}/{c.service_id}")
            if c.status == "critical":
                critical.setdefault(c.service, set()).add(f"{c.node}/{c.service_id}")
    for service, ids in sorted(instances.items()):
        out.append(
            Series(
                "cove_service_instances_critical",
                "Checked instances of a service with a critical check.",
                float(len(critical.get(service, ()))),
                {"service": service},
            )
        )
        out.append(
            Series(
                "cove_service_instances_checked",
                "Instances of a service that have checks.",
                float(len(ids)),
                {"service": service},
            )
        )
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_samples(samples: Iterable[Sample | Series]) -> str:
    """The Prometheus text format (0.0.4) of ``samples``: series of one
    name grouped under one header, in the order names first appear."""
    groups: dict[str, tuple[str, str, list[str]]] = {}
    for sample in samples:
        if isinstance(sample, Series):
            name, help_text, kind = sample.name, sample.help, sample.kind
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
            line = f"{name}{{{labels}}} {sample.value:g}" if labels else f"{name} {sample.value:g}"
        else:
            name, help_text, value = sample
            kind = "gauge"
            line = f"{name} {value:g}"
        group = groups.get(name)
        if group is None:
            group = groups[name] = (help_text, kind, [])
        group[2].append(line)
    lines: list[str] = []
    for name, (help_text, kind, body) in groups.items():
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(body)
    return "\n".join(lines) + "\n"


class Metrics:
    def __init__(self) -> None:
        self._sources: list[Source] = []

    def add(self, source: Source) -> None:
        self._sources.append(source)

    def samples(self) -> list[Sample]:
        """Every source's samples, as they are now."""
        return [sample for source in self._sources for sample in source()]

    def render(self) -> str:
        return render_samples(s for source in self._sources for s in source())

    def install(self, app: web.Application) -> None:
        async def handler(_: web.Request) -> web.Response:
            text = await asyncio.to_thread(self.render)
            return web.Response(text=text, content_type="text/plain", charset="utf-8")

        app.router.add_get("/metrics", handler)


def install_stats(
    app: web.Application,
    traffic: Callable[[], Sequence[EndpointTraffic]],
    checks: Callable[[], Sequence[CheckState]],
) -> None:
    """``GET /api/stats``: the per-endpoint counters and check states now
    (native API: the Unix socket, or HTTPS with an operator token)."""

    async def handler(_: web.Request) -> web.Response:
        def read() -> dict[str, Any]:
            return {
                "time": time.time(),
                "endpoints": [t.to_json() for t in traffic()],
                "checks": [c.to_json() for c in checks()],
            }

        return web.json_response(await asyncio.to_thread(read))

    app.router.add_get("/api/stats", handler)
