"""Checks: the health ``Status`` (worst check wins), the ``CheckKind``s and
the ``CheckDefinition`` that the owning agent runs for a check.

A definition holds what every check has (id, name, service, interval,
timeout, thresholds, initial status, notes) and one record of its kind's own
fields (``HttpProbe``, ``TcpProbe``, ``GrpcProbe``, ``UdpProbe``,
``H2PingProbe``, ``AliasTarget``, ``ScriptArgs``, ``Ttl``; none for a check
whose status is set by whoever registers it), so a check carries exactly
one kind's fields and its ``kind`` follows from that record.

The stored form is the one flat JSON object cove has always written: the
same keys, in the same order, a field at its default left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar


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
class HttpProbe:
    """An HTTP check: a 2xx answer passes, 429 warns, anything else fails."""

    KIND: ClassVar[CheckKind] = CheckKind.HTTP
    url: str
    method: str = "GET"
    header: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    body: str = ""
    tls_skip_verify: bool = False

    def encode(self, d: dict[str, Any]) -> None:
        d["HTTP"] = self.url
        if self.method != "GET":
            d["Method"] = self.method
        if self.header:
            d["Header"] = self.header  # tuples encode as JSON arrays
        if self.body:
            d["Body"] = self.body
        if self.tls_skip_verify:
            d["TLSSkipVerify"] = True

    @classmethod
    def decode(cls, d: Mapping[str, Any]) -> HttpProbe:
        header = d.get("Header")
        return cls(
            url=str(d.get("HTTP", "")),
            method=str(d.get("Method", "GET")),
            header={k: tuple(v) for k, v in header.items()} if header else {},
            body=str(d.get("Body", "")),
            tls_skip_verify=bool(d.get("TLSSkipVerify", False)),
        )


@dataclass(frozen=True, slots=True)
class TcpProbe:
    """A TCP check: a connection to ``address`` (host:port) passes."""

    KIND: ClassVar[CheckKind] = CheckKind.TCP
    address: str

    def encode(self, d: dict[str, Any]) -> None:
        d["TCP"] = self.address

    @classmethod
    def decode(cls, d: Mapping[str, Any]) -> TcpProbe:
        return cls(str(d.get("TCP", "")))


@dataclass(frozen=True, slots=True)
class GrpcProbe:
    """A gRPC health check of ``target`` (host:port[/service])."""

    KIND: ClassVar[CheckKind] = CheckKind.GRPC
    target: str
    use_tls: bool = False
    tls_skip_verify: bool = False

    def encode(self, d: dict[str, Any]) -> None:
        if self.tls_skip_verify:
            d["TLSSkipVerify"] = True
        d["GRPC"] = self.target
        if self.use_tls:
            d["GRPCUseTLS"] = True

    @classmethod
    def decode(cls, d: Mapping[str, Any]) -> GrpcProbe:
        return cls(
            target=str(d.get("GRPC", "")),
            use_tls=bool(d.get("GRPCUseTLS", False)),
            tls_skip_verify=bool(d.get("TLSSkipVerify", False)),
        )


@dataclass(frozen=True, slots=True)
class UdpProbe:
    """A UDP check: a datagram to ``address`` (host:port) not refused passes."""

    KIND: ClassVar[CheckKind] = CheckKind.UDP
    address: str

    def encode(self, d: dict[str, Any]) -> None:
        d["UDP"] = self.address

    @classmethod
    def decode(cls, d: Mapping[str, Any]) -> UdpProbe:
        return cls(str(d.get("UDP", "")))


@dataclass(frozen=True, slots=True)
class H2PingProbe:
    """An HTTP/2 PING to ``address``; TLS unless told otherwise (Consul's
    default)."""

    KIND: ClassVar[CheckKind] = CheckKind.H2PING
    address: str
    use_tls: bool = True
    tls_skip_verify: bool = False

    def encode(self, d: dict[str, Any]) -> None:
        if self.tls_skip_verify:
            d["TLSSkipVerify"] = True
        d["H2PING"] = self.address
        if not self.use_tls:
            d["H2PingUseTLS"] = False

    @classmethod
    def decode(cls, d: Mapping[str, Any]) -> H2PingProbe:
        return cls(
            address=str(d.get("H2PING", "")),
            use_tls=bool(d.get("H2PingUseTLS", True)),
            tls_skip_verify=bool(d.get("TLSSkipVerify", False)),
        )


@dataclass(frozen=True, slots=True)
class AliasTarget:
    """An alias check mirrors ``service``'s health on ``node`` (this agent's
    node when empty), or the node's own when ``service`` is empty."""

    KIND: ClassVar[CheckKind] = CheckKind.ALIAS
    node: str = ""
    service: str = ""

    def encode(self, d: dict[str, Any]) -> None:
        if self.node:
            d["AliasNode"] = self.node
        if self.service:
            d["AliasService"] = self.service

    @classmethod
    def decode(cls, d: Mapping[str, Any]) -> AliasTarget:
        return cls(node=str(d.get("AliasNode", "")), service=str(d.get("AliasService", "")))


@dataclass(frozen=True, slots=True)
class ScriptArgs:
    """A script check: the program and its arguments (exit 0 passes, 1 warns)."""

    KIND: ClassVar[CheckKind] = CheckKind.SCRIPT
    args: tuple[str, ...]

    def encode(self, d: dict[str, Any]) -> None:
        if self.args:
            d["Args"] = self.args

    @classmethod
    def decode(cls, d: Mapping[str, Any]) -> ScriptArgs:
        return cls(tuple(d.get("Args") or ()))


@dataclass(frozen=True, slots=True)
class Ttl:
    """A TTL check: critical unless updated within ``seconds``."""

    KIND: ClassVar[CheckKind] = CheckKind.TTL
    seconds: float

    def encode(self, d: dict[str, Any]) -> None:
        if self.seconds:
            d["TTL"] = self.seconds

    @classmethod
    def decode(cls, d: Mapping[str, Any]) -> Ttl:
        return cls(float(d.get("TTL", 0.0)))


CheckSpec = (
    HttpProbe | TcpProbe | GrpcProbe | UdpProbe | H2PingProbe | AliasTarget | ScriptArgs | Ttl
)
"""One check kind's own fields."""

_SPECS: dict[CheckKind, type[CheckSpec]] = {
    s.KIND: s
    for s in (HttpProbe, TcpProbe, GrpcProbe, UdpProbe, H2PingProbe, AliasTarget, ScriptArgs, Ttl)
}

DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class CheckDefinition:
    """What the owning agent runs for a check (kept beside its state):
    what every check has, and ``spec``, its kind's own fields (``None``
    for a check whose status is set by whoever registers it)."""

    id: str
    name: str
    spec: CheckSpec | None = None
    service_id: str = ""
    service_name: str = ""
    interval: float = 0.0
    timeout: float = DEFAULT_TIMEOUT
    success_before_passing: int = 0
    failures_before_critical: int = 0
    deregister_after: float = 0.0
    initial_status: Status = Status.CRITICAL
    notes: str = ""

    @property
    def kind(self) -> CheckKind:
        spec = self.spec
        return CheckKind.NONE if spec is None else spec.KIND

    def to_json(self) -> dict[str, Any]:
        """The stored form. A field at its default is left out (``from_json``
        restores it): every registration encodes one of these, and most
        fields of a check are unset. Keys keep the order of the flat form
        cove wrote before the kinds were split, so stored bytes match."""
        spec = self.spec
        d: dict[str, Any] = {
            "CheckID": self.id,
            "Name": self.name,
            "Kind": "" if spec is None else spec.KIND.value,
            "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "Status": self.initial_status.value,
        }
        if self.interval:
            d["Interval"] = self.interval
        if self.timeout != DEFAULT_TIMEOUT:
            d["Timeout"] = self.timeout
        if spec is not None:
            spec.encode(d)
        if self.success_before_passing:
            d["SuccessBeforePassing"] = self.success_before_passing
        if self.failures_before_critical:
            d["FailuresBeforeCritical"] = self.failures_before_critical
        if self.deregister_after:
            d["DeregisterCriticalServiceAfter"] = self.deregister_after
        if self.notes:
            d["Notes"] = self.notes
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CheckDefinition:
        """A definition from its stored form. Fields of another kind than
        ``Kind`` (a store written before the split may hold some, unused)
        are ignored."""
        spec_type = _SPECS.get(CheckKind(d.get("Kind", "")))
        return cls(
            id=d["CheckID"],
            name=d.get("Name", ""),
            spec=None if spec_type is None else spec_type.decode(d),
            service_id=d.get("ServiceID", ""),
            service_name=d.get("ServiceName", ""),
            interval=float(d.get("Interval", 0.0)),
            timeout=float(d.get("Timeout", DEFAULT_TIMEOUT)),
            success_before_passing=int(d.get("SuccessBeforePassing", 0)),
            failures_before_critical=int(d.get("FailuresBeforeCritical", 0)),
            deregister_after=float(d.get("DeregisterCriticalServiceAfter", 0.0)),
            initial_status=Status(d.get("Status", "critical")),
            notes=str(d.get("Notes", "")),
        )
