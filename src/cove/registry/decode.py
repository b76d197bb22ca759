"""Turn Consul registration JSON into registry objects, validating it.

Consul accepts request keys in any case and in snake_case (``http``,
``tls_skip_verify``, ``DeregisterCriticalServiceAfter``); ``fold`` makes
every spelling one. Map-valued fields (Meta, Header, TaggedAddresses) keep
their keys verbatim: they are user data, not field names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cove.errors import InvalidArgument
from cove.registry.checks import (
    DEFAULT_TIMEOUT,
    AliasTarget,
    CheckDefinition,
    CheckKind,
    CheckSpec,
    GrpcProbe,
    H2PingProbe,
    HttpProbe,
    ScriptArgs,
    TcpProbe,
    Ttl,
    UdpProbe,
)
from cove.registry.types import ServiceInstance, Status, parse_duration

MIN_INTERVAL = 1.0  # Consul raises shorter intervals to one second
MAX_INTERVAL = 86_400.0  # a day; longer is a mistake, not a health check

_UNSUPPORTED = ("dockercontainerid", "osservice")


def fold(data: Any, what: str = "request") -> dict[str, Any]:
    """A JSON object with its keys lower-cased and underscores dropped."""
    if not isinstance(data, Mapping):
        raise InvalidArgument(f"Request decode failed: {what} must be a JSON object")
    known = _FOLDED.get
    return {known(k) or str(k).lower().replace("_", ""): v for k, v in data.items()}


# Consul's own spellings, folded ahead: a lookup costs less than lower() and
# replace() on every key of every registration.
_CONSUL_KEYS = (
    "ID", "Name", "Service", "Address", "Port", "Tags", "Meta", "Weights",
    "TaggedAddresses", "EnableTagOverride", "Kind", "Check", "Checks", "CheckID",
    "TTL", "Status", "Notes", "HTTP", "TCP", "GRPC", "UDP", "H2PING", "Interval",
    "Timeout", "Method", "Header", "Body", "TLSSkipVerify", "GRPCUseTLS",
    "H2PingUseTLS", "AliasNode", "AliasService", "Args", "ServiceID",
    "SuccessBeforePassing", "FailuresBeforeCritical", "DeregisterCriticalServiceAfter",
    "Passing", "Warning",
)  # fmt: skip
_FOLDED = {k: k.lower() for k in _CONSUL_KEYS}


def text(d: Mapping[str, Any], key: str, what: str, default: str = "") -> str:
    v = d.get(key)
    if v is None:
        return default
    if not isinstance(v, str):
        raise InvalidArgument(f"Request decode failed: {what} must be a string, got {v!r}")
    return v


def integer(d: Mapping[str, Any], key: str, what: str, default: int = 0) -> int:
    v = d.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidArgument(f"Request decode failed: {what} must be an integer, got {v!r}")
    return v


def flag(d: Mapping[str, Any], key: str, what: str) -> bool:
    v = d.get(key)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise InvalidArgument(f"Request decode failed: {what} must be a boolean, got {v!r}")
    return v


def strings(d: Mapping[str, Any], key: str, what: str) -> tuple[str, ...]:
    v = d.get(key)
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InvalidArgument(f"Request decode failed: {what} must be a list of strings")
    return tuple(v)


def string_map(d: Mapping[str, Any], key: str, what: str) -> dict[str, str]:
    v = d.get(key)
    if v is None:
        return {}
    if not isinstance(v, Mapping) or not all(isinstance(x, str) for x in v.values()):
        raise InvalidArgument(f"Request decode failed: {what} must map strings to strings")
    return {str(k): x for k, x in v.items()}


def service_from_json(
    data: Any, node: str
) -> tuple[ServiceInstance, list[tuple[CheckDefinition, Status]]]:
    """An agent service registration: the instance and its checks with
    their initial status. ``InvalidArgument`` with Consul's message when the
    body is not a valid registration."""
    d = fold(data, "service")
    # The catalog's AgentService spells the name "Service".
    name = text(d, "name", "Name") or text(d, "service", "Service")
    if not name:
        raise InvalidArgument("Missing service name")
    sid = text(d, "id", "ID") or name
    port = integer(d, "port", "Port")
    if not 0 <= port <= 65535:
        raise InvalidArgument(f"Invalid service port {port}")
    weights = d.get("weights")
    passing, warning = 1, 1
    if weights is not None:
        w = fold(weights, "Weights")
        passing = integer(w, "passing", "Weights.Passing", 1)
        warning = integer(w, "warning", "Weights.Warning", 1)
        if passing < 1:
            raise InvalidArgument("Passing must be greater than 0")
    _refuse_connect(d)
    tagged = service_addresses(d.get("taggedaddresses"))
    inst = ServiceInstance(
        id=sid,
        name=name,
        node=node,
        address=text(d, "address", "Address"),
        port=port,
        tags=strings(d, "tags", "Tags"),
        meta=string_map(d, "meta", "Meta"),
        weights=(passing, warning),
        tagged_addresses=tagged,
        enable_tag_override=flag(d, "enabletagoverride", "EnableTagOverride"),
        kind="",
    )
    raw_checks: list[Any] = []
    if d.get("check") is not None:
        raw_checks.append(d["check"])
    more = d.get("checks")
    if more is not None:
        if not isinstance(more, list):
            raise InvalidArgument("Request decode failed: Checks must be a list")
        raw_checks.extend(more)
    checks: list[tuple[CheckDefinition, Status]] = []
    for i, raw in enumerate(raw_checks, start=1):
        default_id = f"service:{sid}" if len(raw_checks) == 1 else f"service:{sid}:{i}"
        checks.append(
            check_from_json(
                raw, default_id=default_id, default_name=f"Service '{name}' check", service=inst
            )
        )
    return inst, checks


# What a registration may carry only for Consul Connect (service mesh), which
# cove does not implement: refused with a 400 rather than stored and ignored.
_CONNECT_FIELDS = ("connect", "proxy")


def _refuse_connect(d: Mapping[str, Any]) -> None:
    kind = text(d, "kind", "Kind")
    if kind not in ("", "typical"):
        raise InvalidArgument(
            f'Invalid service: Kind "{kind}" is a Consul Connect proxy or gateway, which cove'
            " does not implement; register a plain service (no Kind) instead"
        )
    for key in _CONNECT_FIELDS:
        value = d.get(key)
        if not value:
            continue  # absent, null or {}: nothing asked for
        if key == "proxy":
            raise InvalidArgument(
                "Invalid service: Proxy configures a Consul Connect proxy, which cove does not"
                " implement; remove the Proxy field"
            )
        fold(value, "Connect")  # an object, or a decode error
        # Even an empty SidecarService asks for a sidecar; Native false does not.
        asked = sorted(str(k) for k, v in value.items() if v is not None and v is not False)
        if asked:
            raise InvalidArgument(
                f"Invalid service: Connect ({', '.join('Connect.' + k for k in asked)}) is"
                " Consul's service mesh, which cove does not implement; remove the Connect"
                " field (cove's own network policy governs traffic between services)"
            )


def service_addresses(raw: Any) -> dict[str, dict[str, Any]]:
    """A service's TaggedAddresses in Consul's shape: each name maps to
    ``{"Address": ..., "Port": ...}`` whatever the case of the keys sent
    (Go's JSON decoding ignores case)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidArgument("Request decode failed: TaggedAddresses must be an object")
    out: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        what = f"TaggedAddresses.{name}"
        v = fold(value, what)
        port = integer(v, "port", f"{what}.Port")
        if not 0 <= port <= 65535:
            raise InvalidArgument(f"Invalid service: {what}.Port {port} out of range")
        out[str(name)] = {"Address": text(v, "address", f"{what}.Address"), "Port": port}
    return out


def check_from_json(
    data: Any,
    *,
    default_id: str = "",
    default_name: str = "",
    service: ServiceInstance | None = None,
) -> tuple[CheckDefinition, Status]:
    """One check definition and its initial status (critical unless the
    request says otherwise, as in Consul)."""
    d = fold(data, "check")
    cid = text(d, "checkid", "CheckID") or text(d, "id", "ID") or default_id
    name = text(d, "name", "Name") or default_name
    if not name and not cid:
        raise InvalidArgument("Missing check name")
    cid = cid or name
    name = name or cid
    status_text = text(d, "status", "Status") or Status.CRITICAL.value
    try:
        status = Status(status_text)
    except ValueError as exc:
        raise InvalidArgument(f"Invalid check status: {status_text!r}") from exc
    for key in _UNSUPPORTED:
        if d.get(key):
            raise InvalidArgument(f"Invalid check: cove does not support {key} checks")
    if d.get("script"):
        raise InvalidArgument("Invalid check: the Script field was removed; use Args")
    args = strings(d, "args", "Args") or strings(d, "scriptargs", "ScriptArgs")
    http = text(d, "http", "HTTP")
    tcp = text(d, "tcp", "TCP")
    grpc = text(d, "grpc", "GRPC")
    udp = text(d, "udp", "UDP")
    h2ping = text(d, "h2ping", "H2PING")
    alias_node = text(d, "aliasnode", "AliasNode")
    alias_service = text(d, "aliasservice", "AliasService")
    ttl = parse_duration(d.get("ttl"), "TTL")
    kinds = [
        k
        for k, present in (
            (CheckKind.HTTP, http),
            (CheckKind.TCP, tcp),
            (CheckKind.GRPC, grpc),
            (CheckKind.UDP, udp),
            (CheckKind.H2PING, h2ping),
            (CheckKind.ALIAS, alias_node or alias_service),
            (CheckKind.SCRIPT, args),
            (CheckKind.TTL, d.get("ttl") not in (None, "")),
        )
        if present
    ]
    if len(kinds) > 1:
        raise InvalidArgument(f"Invalid check: more than one check type given ({kinds})")
    interval = parse_duration(d.get("interval"), "Interval")
    timeout = parse_duration(d.get("timeout"), "Timeout") or DEFAULT_TIMEOUT
    kind = kinds[0] if kinds else CheckKind.NONE
    if kind is CheckKind.NONE:
        if service is not None or d.get("interval") not in (None, ""):
            raise InvalidArgument(
                "Invalid check: exactly one of Args, HTTP, TCP, UDP, GRPC, H2PING or TTL"
                " is required"
            )
    elif kind is CheckKind.ALIAS:
        if service is not None and alias_service == service.id and not alias_node:
            raise InvalidArgument("Invalid check: a service cannot alias itself")
    elif kind is CheckKind.TTL:
        if ttl <= 0:
            raise InvalidArgument("Invalid check: TTL must be > 0 for TTL checks")
        if ttl > MAX_INTERVAL:
            raise InvalidArgument(f"Invalid check: TTL must be at most {MAX_INTERVAL:g}s")
    else:
        if interval <= 0:
            raise InvalidArgument(
                "Invalid check: Interval must be > 0 for Script, HTTP, TCP, UDP, GRPC or H2PING"
                " checks"
            )
        if interval > MAX_INTERVAL:
            raise InvalidArgument(f"Invalid check: Interval must be at most {MAX_INTERVAL:g}s")
        interval = max(interval, MIN_INTERVAL)
    if timeout < 0 or timeout > MAX_INTERVAL:
        raise InvalidArgument("Invalid check: Timeout out of range")
    for k, target in ((CheckKind.TCP, tcp), (CheckKind.UDP, udp), (CheckKind.H2PING, h2ping)):
        if kind is k and not _host_port(target):
            raise InvalidArgument(f"Invalid check: {k.name} must be host:port, got {target!r}")
    header_raw = d.get("header") or {}
    if not isinstance(header_raw, Mapping):
        raise InvalidArgument("Request decode failed: Header must map names to lists")
    header: dict[str, tuple[str, ...]] = {}
    for hk, hv in header_raw.items():
        if isinstance(hv, str):
            hv = [hv]
        if not isinstance(hv, list) or not all(isinstance(x, str) for x in hv):
            raise InvalidArgument("Request decode failed: Header values must be lists of strings")
        header[str(hk)] = tuple(hv)
    sbp = integer(d, "successbeforepassing", "SuccessBeforePassing")
    fbc = integer(d, "failuresbeforecritical", "FailuresBeforeCritical")
    if sbp < 0 or fbc < 0:
        raise InvalidArgument(
            "Invalid check: SuccessBeforePassing and FailuresBeforeCritical must not be negative"
        )
    dereg = parse_duration(
        d.get("deregistercriticalserviceafter"), "DeregisterCriticalServiceAfter"
    )
    if dereg < 0:
        raise InvalidArgument("Invalid check: DeregisterCriticalServiceAfter must not be negative")
    service_id = service.id if service else text(d, "serviceid", "ServiceID")
    # Every field is validated whatever the kind (a malformed one is refused
    # as before), but a check keeps only its own kind's.
    method = text(d, "method", "Method") or "GET"
    body = text(d, "body", "Body")
    tls_skip_verify = flag(d, "tlsskipverify", "TLSSkipVerify")
    grpc_use_tls = flag(d, "grpcusetls", "GRPCUseTLS")
    # Consul's default: H2PING speaks TLS unless told otherwise.
    h2ping_use_tls = d.get("h2pingusetls") is None or flag(d, "h2pingusetls", "H2PingUseTLS")
    spec: CheckSpec | None
    match kind:
        case CheckKind.HTTP:
            spec = HttpProbe(http, method, header, body, tls_skip_verify)
        case CheckKind.TCP:
            spec = TcpProbe(tcp)
        case CheckKind.GRPC:
            spec = GrpcProbe(grpc, grpc_use_tls, tls_skip_verify)
        case CheckKind.UDP:
            spec = UdpProbe(udp)
        case CheckKind.H2PING:
            spec = H2PingProbe(h2ping, h2ping_use_tls, tls_skip_verify)
        case CheckKind.ALIAS:
            spec = AliasTarget(alias_node, alias_service)
        case CheckKind.SCRIPT:
            spec = ScriptArgs(args)
        case CheckKind.TTL:
            spec = Ttl(ttl)
        case _:
            spec = None
    definition = CheckDefinition(
        id=cid,
        name=name,
        spec=spec,
        service_id=service_id,
        service_name=service.name if service else "",
        interval=interval,
        timeout=timeout,
        success_before_passing=sbp,
        failures_before_critical=fbc,
        deregister_after=dereg,
        initial_status=status,
        notes=text(d, "notes", "Notes"),
    )
    return definition, status


def _host_port(target: str) -> bool:
    """``host:port`` (``[v6]:port`` for IPv6) with a port in 1..65535."""
    host, sep, port = target.rpartition(":")
    return bool(sep and host.strip("[]") and port.isdigit() and 0 < int(port) < 65536)
