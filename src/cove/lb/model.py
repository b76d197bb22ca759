"""Service virtual IPs and their backends, as values.

Store keys (the ``lb/`` prefix is this package's):

- ``lb/vips/<service>``   Vip: the service's virtual address and settings
- ``lb/ips/<address>``    the service holding an address (a reservation, so
                          two services never share one VIP)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cove.errors import InvalidArgument
from cove.model import IPAddress, IPNetwork

LB = "lb/"
VIPS = "lb/vips/"
VIP_IPS = "lb/ips/"

DEFAULT_VIP_RANGES: tuple[IPNetwork, ...] = (ipaddress.ip_network("10.96.0.0/16"),)


class Proto(StrEnum):
    TCP = "tcp"
    UDP = "udp"


@dataclass(frozen=True, slots=True)
class Vip:
    """A service's virtual IP.

    ``port`` None: VIP:p leads to the backends listening on p, for every
    port p the backends have. ``port`` set: VIP:port leads to every backend
    on its own port (Kubernetes' port/targetPort). ``affinity_timeout`` > 0
    keeps a client IP on the backend it first reached for that many seconds
    of idleness.
    """

    service: str
    address: IPAddress
    port: int | None = None
    protocols: tuple[Proto, ...] = (Proto.TCP, Proto.UDP)
    affinity_timeout: int = 0

    def __post_init__(self) -> None:
        if not self.service:
            raise InvalidArgument("a VIP needs a service name")
        if self.port is not None and not 0 < self.port < 65536:
            raise InvalidArgument(f"invalid VIP port {self.port}", port=self.port)
        if not self.protocols:
            raise InvalidArgument("a VIP needs at least one protocol")
        if not 0 <= self.affinity_timeout <= 86400 * 7:
            raise InvalidArgument(
                "affinity timeout must be 0 (off) to 604800 seconds",
                timeout=self.affinity_timeout,
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "address": str(self.address),
            "port": self.port,
            "protocols": [p.value for p in self.protocols],
            "affinity_timeout": self.affinity_timeout,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Vip:
        try:
            port = data.get("port")
            return cls(
                service=str(data["service"]),
                address=ipaddress.ip_address(data["address"]),
                port=int(port) if port is not None else None,
                protocols=tuple(Proto(p) for p in data.get("protocols") or ("tcp", "udp")),
                affinity_timeout=int(data.get("affinity_timeout") or 0),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidArgument(f"malformed VIP: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Backend:
    """One passing instance a VIP may lead to. ``weight`` is Consul's
    Weights.Passing (1 unless told)."""

    address: IPAddress
    port: int
    weight: int = 1
