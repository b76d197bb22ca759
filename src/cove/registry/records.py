"""The registry's records: nodes, service instances, check states, KV
entries and sessions. Each converts to and from the JSON kept in the store,
in Consul's field names, so the HTTP edge only adds the index fields."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cove.registry.checks import CheckKind, Status
from cove.registry.durations import format_duration, parse_duration

SERF_CHECK = "serfHealth"
OUTPUT_LIMIT = 4096
CONSUL_SERVICE = "consul"  # the service every agent shows itself as, on its node
CONSUL_VERSION = "1.17.0"  # the Consul version whose API cove answers as


class Behavior(StrEnum):
    RELEASE = "release"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    address: str
    datacenter: str
    id: str = ""
    tagged_addresses: Mapping[str, str] = field(default_factory=dict)
    meta: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Node": self.name,
            "Address": self.address,
            "Datacenter": self.datacenter,
            "TaggedAddresses": dict(self.tagged_addresses),
            "Meta": dict(self.meta),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Node:
        return cls(
            name=d["Node"],
            address=d.get("Address", ""),
            datacenter=d.get("Datacenter", ""),
            id=d.get("ID", ""),
            tagged_addresses=dict(d.get("TaggedAddresses") or {}),
            meta=dict(d.get("Meta") or {}),
        )


@dataclass(frozen=True, slots=True)
class ServiceInstance:
    id: str
    name: str
    node: str
    address: str = ""
    port: int = 0
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    weights: tuple[int, int] = (1, 1)  # passing, warning
    tagged_addresses: Mapping[str, Any] = field(default_factory=dict)
    enable_tag_override: bool = False
    kind: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Service": self.name,
            "Node": self.node,
            "Address": self.address,
            "Port": self.port,
            "Tags": list(self.tags),
            "Meta": dict(self.meta),
            "Weights": {"Passing": self.weights[0], "Warning": self.weights[1]},
            "TaggedAddresses": dict(self.tagged_addresses),
            "EnableTagOverride": self.enable_tag_override,
            "Kind": self.kind,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ServiceInstance:
        w = d.get("Weights") or {}
        return cls(
            id=d["ID"],
            name=d["Service"],
            node=d["Node"],
            address=d.get("Address", ""),
            port=int(d.get("Port", 0)),
            tags=tuple(d.get("Tags") or ()),
            meta=dict(d.get("Meta") or {}),
            weights=(int(w.get("Passing", 1)), int(w.get("Warning", 1))),
            tagged_addresses=dict(d.get("TaggedAddresses") or {}),
            enable_tag_override=bool(d.get("EnableTagOverride", False)),
            kind=d.get("Kind", ""),
        )


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """A check's current state, as the catalog and health endpoints show it."""

    id: str
    name: str
    node: str
    status: Status
    service_id: str = ""
    service_name: str = ""
    service_tags: tuple[str, ...] = ()
    notes: str = ""
    output: str = ""
    kind: CheckKind = CheckKind.NONE
    interval: float = 0.0
    timeout: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "Node": self.node,
            "CheckID": self.id,
            "Name": self.name,
            "Status": str(self.status),  # a StrEnum: its value, without the slow .value
            "Notes": self.notes,
            "Output": self.output,
            "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "ServiceTags": list(self.service_tags),
            "Type": str(self.kind),
            "Interval": format_duration(self.interval) if self.interval else "",
            "Timeout": format_duration(self.timeout) if self.timeout else "",
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> HealthCheck:
        return cls(
            id=d["CheckID"],
            name=d.get("Name", ""),
            node=d["Node"],
            status=Status(d.get("Status", "critical")),
            service_id=d.get("ServiceID", ""),
            service_name=d.get("ServiceName", ""),
            service_tags=tuple(d.get("ServiceTags") or ()),
            notes=d.get("Notes", ""),
            output=d.get("Output", ""),
            kind=CheckKind(d.get("Type", "")),
            interval=parse_duration(d.get("Interval"), "Interval"),
            timeout=parse_duration(d.get("Timeout"), "Timeout"),
        )


@dataclass(frozen=True, slots=True)
class KVEntry:
    key: str
    value: bytes | None
    flags: int = 0
    session: str = ""
    lock_index: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "Key": self.key,
            "Flags": self.flags,
            "Value": base64.b64encode(self.value).decode() if self.value else None,
            "Session": self.session,
            "LockIndex": self.lock_index,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> KVEntry:
        raw = d.get("Value")
        return cls(
            key=d["Key"],
            value=base64.b64decode(raw) if raw else None,
            flags=int(d.get("Flags", 0)),
            session=d.get("Session", ""),
            lock_index=int(d.get("LockIndex", 0)),
        )


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    node: str
    name: str = ""
    lock_delay: float = 15.0
    behavior: Behavior = Behavior.RELEASE
    ttl: float = 0.0
    node_checks: tuple[str, ...] = (SERF_CHECK,)
    service_checks: tuple[tuple[str, str], ...] = ()  # (check id, namespace)
    deadline: float = 0.0  # wall clock; 0: no TTL

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Node": self.node,
            "LockDelay": int(self.lock_delay * 1e9),
            "Behavior": self.behavior.value,
            "TTL": format_duration(self.ttl) if self.ttl else "",
            "NodeChecks": list(self.node_checks),
            "ServiceChecks": [{"ID": c, "Namespace": ns} for c, ns in self.service_checks] or None,
            "Deadline": self.deadline,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Session:
        return cls(
            id=d["ID"],
            node=d["Node"],
            name=d.get("Name", ""),
            lock_delay=int(d.get("LockDelay", 0)) / 1e9,
            behavior=Behavior(d.get("Behavior", "release")),
            ttl=parse_duration(d.get("TTL"), "TTL"),
            node_checks=tuple(d.get("NodeChecks") or ()),
            service_checks=tuple(
                (c["ID"], c.get("Namespace", "")) for c in d.get("ServiceChecks") or ()
            ),
            deadline=float(d.get("Deadline", 0.0)),
        )
