"""Typed domain objects, converted to JSON only at the store and API edges.

Store keys (each domain owns its prefix):

- ``networks/<name>``                       Network
- ``ipam/<network>/<address>``              who holds an address (IPAM)
- ``ipamblocks/<network>/<block address>`` which node allocates in a block (IPAM)
- ``endpoints/<network>/<node>/<id>``       Endpoint: a container on a network,
                                            under the node that runs it (an
                                            agent watches only its own node's
                                            on a host-local network); records
                                            of before, ``endpoints/<network>/<id>``,
                                            are moved by their agent at start-up
- ``containers/<node>/<name>``              Container (runtime; ``cove.runtime.keys``)
- ``cluster/names/<name>``                  a container name's claim
- ``cluster/status/<node>/<container id>``  its process, as its node last saw it
- ``registry/...``                          catalog, checks, KV, sessions
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cove.naming import dns_names, full_id

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NETWORKS = "networks/"
IPAM = "ipam/"
IPAM_BLOCKS = "ipamblocks/"
ENDPOINTS = "endpoints/"
CONTAINERS = "containers/"


def endpoints_in(network: str) -> str:
    """The prefix of every endpoint on ``network``, whatever its node."""
    return f"{ENDPOINTS}{network}/"


def endpoints_of(network: str, node: str) -> str:
    """The prefix of ``node``'s endpoints on ``network``."""
    return f"{ENDPOINTS}{network}/{node}/"


def endpoint_key(network: str, node: str, endpoint_id: str) -> str:
    """Where the endpoint ``endpoint_id`` of ``node`` on ``network`` lies.
    Raises ``ValueError`` without a node: every record written now has one
    (an empty segment would read as a node named "")."""
    if not node:
        raise ValueError(f"endpoint {endpoint_id} on {network} has no node")
    return f"{ENDPOINTS}{network}/{node}/{endpoint_id}"


def legacy_endpoint_key(network: str, endpoint_id: str) -> str:
    """Where an endpoint written before the per-node layout lies (until its
    agent moves it at start-up; ``cove.runtime.relayout``)."""
    return f"{ENDPOINTS}{network}/{endpoint_id}"


def network_of(key: str) -> str:
    """The network a key under ``endpoints/`` or ``ipam/`` belongs to (its
    first segment after the prefix)."""
    return key.split("/", 2)[1]


def parse_endpoint_key(key: str) -> tuple[str, str, str] | None:
    """(network, node, endpoint id) of an endpoint key; the node is "" for a
    key of the layout before nodes; ``None`` for anything else."""
    if not key.startswith(ENDPOINTS):
        return None
    parts = key[len(ENDPOINTS) :].split("/")
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    if len(parts) == 2 and all(parts):
        return parts[0], "", parts[1]
    return None


class NetworkDriver(StrEnum):
    BRIDGE = "bridge"
    OVERLAY = "overlay"


@dataclass(frozen=True, slots=True)
class Subnet:
    """One address family's subnet of a network."""

    cidr: IPNetwork
    gateway: IPAddress
    ip_range: IPNetwork | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "subnet": str(self.cidr),
            "gateway": str(self.gateway),
            "ip_range": str(self.ip_range) if self.ip_range else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Subnet:
        rng = data.get("ip_range")
        return cls(
            cidr=ipaddress.ip_network(data["subnet"]),
            gateway=ipaddress.ip_address(data["gateway"]),
            ip_range=ipaddress.ip_network(rng) if rng else None,
        )


@dataclass(frozen=True, slots=True)
class Network:
    """A virtual network: a bridge (the virtual switch), its subnets and rules."""

    id: str
    name: str
    subnets: tuple[Subnet, ...]
    bridge: str
    internal: bool = False
    mtu: int = 1500
    labels: Mapping[str, str] = field(default_factory=dict)
    driver: NetworkDriver = NetworkDriver.BRIDGE
    default_deny: bool = False
    created: float = 0.0
    vni: int | None = None  # the VXLAN network identifier of an overlay network

    @property
    def ipv4(self) -> Subnet | None:
        return next((s for s in self.subnets if s.cidr.version == 4), None)

    @property
    def ipv6(self) -> Subnet | None:
        return next((s for s in self.subnets if s.cidr.version == 6), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "subnets": [s.to_json() for s in self.subnets],
            "bridge": self.bridge,
            "internal": self.internal,
            "mtu": self.mtu,
            "labels": dict(self.labels),
            "driver": self.driver.value,
            "default_deny": self.default_deny,
            "created": self.created,
            "vni": self.vni,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Network:
        return cls(
            id=full_id(data["id"]),  # records from before 64-hex IDs get one
            name=data["name"],
            subnets=tuple(Subnet.from_json(s) for s in data["subnets"]),
            bridge=data["bridge"],
            internal=bool(data.get("internal", False)),
            mtu=int(data.get("mtu", 1500)),
            labels=dict(data.get("labels") or {}),
            driver=NetworkDriver(data.get("driver", "bridge")),
            default_deny=bool(data.get("default_deny", False)),
            created=float(data.get("created", 0.0)),
            vni=int(data["vni"]) if data.get("vni") is not None else None,
        )


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A container's attachment to one network: one veth pair, its addresses."""

    id: str
    network: str
    container_id: str
    container_name: str
    interface: str  # name inside the container, eth0, eth1, ...
    host_veth: str  # host side, plugged into the network's bridge
    mac: str
    ipv4: ipaddress.IPv4Address | None = None
    ipv6: ipaddress.IPv6Address | None = None
    aliases: tuple[str, ...] = ()
    hostname: str = ""
    netns: str = ""  # path of the container's network namespace
    services: tuple[str, ...] = ()  # "name:port" given with --service
    node: str = ""  # the node whose agent built it; empty: a single-host record
    # The container's labels (policy selects on them without reading the
    # container, which lies under its node's keys); empty in older records.
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def addresses(self) -> tuple[IPAddress, ...]:
        return tuple(a for a in (self.ipv4, self.ipv6) if a is not None)

    @property
    def key(self) -> str:
        """Its store key (``ValueError`` for a record without a node)."""
        return endpoint_key(self.network, self.node, self.id)

    def names(self) -> tuple[str, ...]:
        """Every name this endpoint answers to on its network (lower case)."""
        out: list[str] = []
        for given in (self.container_name, self.hostname, *self.aliases):
            for n in dns_names(given):
                if n and n not in out:
                    out.append(n)
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "network": self.network,
            "container_id": self.container_id,
            "container_name": self.container_name,
            "interface": self.interface,
            "host_veth": self.host_veth,
            "mac": self.mac,
            "ipv4": str(self.ipv4) if self.ipv4 else None,
            "ipv6": str(self.ipv6) if self.ipv6 else None,
            "aliases": list(self.aliases),
            "hostname": self.hostname,
            "netns": self.netns,
            "services": list(self.services),
            "node": self.node,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Endpoint:
        v4 = data.get("ipv4")
        v6 = data.get("ipv6")
        return cls(
            id=data["id"],
            network=data["network"],
            container_id=data["container_id"],
            container_name=data["container_name"],
            interface=data["interface"],
            host_veth=data["host_veth"],
            mac=data["mac"],
            ipv4=ipaddress.IPv4Address(v4) if v4 else None,
            ipv6=ipaddress.IPv6Address(v6) if v6 else None,
            aliases=tuple(data.get("aliases") or ()),
            hostname=data.get("hostname", ""),
            netns=data.get("netns", ""),
            services=tuple(data.get("services") or ()),
            node=str(data.get("node") or ""),
            labels={str(k): str(v) for k, v in (data.get("labels") or {}).items()},
        )


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """``NAME:PORT[:TAG,TAG...]`` as given to ``cove run --service``."""

    name: str
    port: int
    tags: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> ServiceSpec | None:
        """The spec, or ``None`` when ``text`` is malformed."""
        name, _, rest = text.partition(":")
        port, _, tags = rest.partition(":")
        if not _SERVICE_NAME.match(name) or not port.isdigit() or not 0 < int(port) < 65536:
            return None
        tag_list = tuple(t for t in tags.split(",") if t) if tags else ()
        if any(not _TAG.match(t) for t in tag_list):
            return None
        return cls(name.lower(), int(port), tag_list)


_SERVICE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
