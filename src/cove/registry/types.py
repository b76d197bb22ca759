"""Registry domain objects and the store key layout.

Each object converts to and from the JSON kept in the store; that JSON uses
Consul's field names, so the HTTP edge only adds the index fields.

Store keys (all under ``registry/``; path segments are percent-quoted so a
``/`` inside a name cannot forge another key):

- ``registry/nodes/<node>``                          Node
- ``registry/svc/<service>/<node>/<service id>``     ServiceInstance
- ``registry/chk/<service>/<node>/<check id>``       HealthCheck of an instance
- ``registry/nodechk/<node>/<check id>``             HealthCheck of a node
- ``registry/agent/<node>/svc/<service id>``         service name (id lookup)
- ``registry/agent/<node>/chk/<check id>``           CheckDefinition (what the
  node's agent runs)
- ``registry/kv/<key>``                              KVEntry
- ``registry/sessions/<id>``                         Session

Keeping a service's instances and checks under one name lets a blocking query
on that service watch only its own prefixes.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from enum import StrEnum
from typing import Any

from cove.errors import InvalidArgument

ROOT = "registry/"
NODES = "registry/nodes/"
SERVICES = "registry/svc/"
CHECKS = "registry/chk/"
NODE_CHECKS = "registry/nodechk/"
AGENT = "registry/agent/"
KV = "registry/kv/"
SESSIONS = "registry/sessions/"

SERF_CHECK = "serfHealth"
OUTPUT_LIMIT = 4096


def seg(name: str) -> str:
    """One key path segment: ``%`` and ``/`` percent-escaped (reversible
    with ``urllib.parse.unquote``), so a name cannot forge another key."""
    if "%" in name or "/" in name:
        return name.replace("%", "%25").replace("/", "%2F")
    return name


def node_key(node: str) -> str:
    return f"{NODES}{seg(node)}"


def service_prefix(service: str) -> str:
    return f"{SERVICES}{seg(service)}/"


def service_key(service: str, node: str, service_id: str) -> str:
    return f"{SERVICES}{seg(service)}/{seg(node)}/{seg(service_id)}"


def check_prefix(service: str) -> str:
    return f"{CHECKS}{seg(service)}/"


def check_key(service: str, node: str, check_id: str) -> str:
    if not service:
        return f"{NODE_CHECKS}{seg(node)}/{seg(check_id)}"
    return f"{CHECKS}{seg(service)}/{seg(node)}/{seg(check_id)}"


def agent_service_key(node: str, service_id: str) -> str:
    return f"{AGENT}{seg(node)}/svc/{seg(service_id)}"


def agent_check_key(node: str, check_id: str) -> str:
    return f"{AGENT}{seg(node)}/chk/{seg(check_id)}"


def kv_key(key: str) -> str:
    # KV keys are kept verbatim: prefix queries must match Consul's plain
    # string prefixes, which quoting would break.
    return f"{KV}{key}"


def session_key(session_id: str) -> str:
    return f"{SESSIONS}{seg(session_id)}"


class Status(StrEnum):
    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"
    MAINTENANCE = "maintenance"

    @property
    def rank(self) -> int:
        """Worse is higher: a service's status is its worst check's."""
        return _RANK[self]


_RANK = {Status.PASSING: 0, Status.WARNING: 1, Status.CRITICAL: 2, Status.MAINTENANCE: 3}


class CheckKind(StrEnum):
    HTTP = "http"
    TCP = "tcp"
    TTL = "ttl"
    GRPC = "grpc"
    SCRIPT = "script"
    UDP = "udp"
    H2PING = "h2ping"
    ALIAS = "alias"
    NONE = ""  # catalog-registered checks: status set by whoever registers


class Behavior(StrEnum):
    RELEASE = "release"
    DELETE = "delete"


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any, what: str) -> float:
    """Seconds from a Go duration ("10s", "1m30s", "250ms") or a number of
    nanoseconds, as Consul accepts both. ``InvalidArgument`` otherwise."""
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool):
        raise InvalidArgument(f"{what}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        return float(value) / 1e9
    if not isinstance(value, str):
        raise InvalidArgument(f"{what}: expected a duration, got {value!r}")
    unit = _UNIT.get(value[-1:])
    if unit is not None and value[:-1].isdigit() and value[:-1].isascii():
        return int(value[:-1]) * unit  # the common "10s", "1h", "30m"
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    pos = 0
    total = 0.0
    for m in _DURATION.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(body) or not body:
        raise InvalidArgument(f"{what}: invalid duration {value!r}")
    return sign * total


def format_duration(seconds: float) -> str:
    """A Go-style duration string ("10s", "1m30s", "500ms")."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    frac = seconds - whole
    out = (f"{h}h" if h else "") + (f"{m}m" if h or m else "")
    sec = f"{s + frac:g}" if frac else str(s)
    return f"{out}{sec}s"


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
class CheckDefinition:
    """What the owning agent runs for a check (kept beside its state)."""

    id: str
    name: str
    kind: CheckKind
    service_id: str = ""
    service_name: str = ""
    interval: float = 0.0
    timeout: float = 10.0
    ttl: float = 0.0
    http: str = ""
    method: str = "GET"
    header: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    body: str = ""
    tls_skip_verify: bool = False
    tcp: str = ""
    grpc: str = ""
    grpc_use_tls: bool = False
    udp: str = ""
    h2ping: str = ""
    h2ping_use_tls: bool = True
    alias_node: str = ""
    alias_service: str = ""
    args: tuple[str, ...] = ()
    success_before_passing: int = 0
    failures_before_critical: int = 0
    deregister_after: float = 0.0
    initial_status: Status = Status.CRITICAL
    notes: str = ""

    def to_json(self) -> dict[str, Any]:
        """The stored form. A field at its default is left out (``from_json``
        restores it): every registration encodes one of these, and most
        fields of a check are unset."""
        d: dict[str, Any] = {
            "CheckID": self.id,
            "Name": self.name,
            "Kind": str(self.kind),
            "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "Status": str(self.initial_status),
        }
        for attr, key, _ in _CHECK_OPTIONAL:
            value = getattr(self, attr)
            if value != _CHECK_DEFAULTS[attr]:
                d[key] = value  # tuples encode as JSON arrays
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CheckDefinition:
        return cls(
            id=d["CheckID"],
            name=d.get("Name", ""),
            kind=CheckKind(d.get("Kind", "")),
            service_id=d.get("ServiceID", ""),
            service_name=d.get("ServiceName", ""),
            initial_status=Status(d.get("Status", "critical")),
            **{attr: decode(d[key]) for attr, key, decode in _CHECK_OPTIONAL if key in d},
        )


def _header(value: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    return {k: tuple(v) for k, v in (value or {}).items()}


# CheckDefinition's fields stored only when set: (attribute, JSON key, decoder).
_CHECK_OPTIONAL: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("interval", "Interval", float),
    ("timeout", "Timeout", float),
    ("ttl", "TTL", float),
    ("http", "HTTP", str),
    ("method", "Method", str),
    ("header", "Header", _header),
    ("body", "Body", str),
    ("tls_skip_verify", "TLSSkipVerify", bool),
    ("tcp", "TCP", str),
    ("grpc", "GRPC", str),
    ("grpc_use_tls", "GRPCUseTLS", bool),
    ("udp", "UDP", str),
    ("h2ping", "H2PING", str),
    ("h2ping_use_tls", "H2PingUseTLS", bool),
    ("alias_node", "AliasNode", str),
    ("alias_service", "AliasService", str),
    ("args", "Args", lambda v: tuple(v or ())),
    ("success_before_passing", "SuccessBeforePassing", int),
    ("failures_before_critical", "FailuresBeforeCritical", int),
    ("deregister_after", "DeregisterCriticalServiceAfter", float),
    ("notes", "Notes", str),
)


def _default(f: Field[Any]) -> Any:
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


_CHECK_DEFAULTS: dict[str, Any] = {
    f.name: _default(f)
    for f in fields(CheckDefinition)
    if f.name in {a for a, _, _ in _CHECK_OPTIONAL}
}


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
