"""Checks: the health ``Status`` (worst check wins), the ``CheckKind``s and
the ``CheckDefinition`` that the owning agent runs for a check."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from enum import StrEnum
from typing import Any


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
