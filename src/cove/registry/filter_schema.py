"""The shapes of the records Consul's ``?filter`` runs over, so a selector
that names no field is an error before anything is evaluated (go-bexpr
checks selectors against the Go type the same way: a typo is a 400, not an
empty answer that looks like "nothing matched").

A shape is a ``Struct`` (known fields), a ``MapOf`` (any key: ``Meta``,
``NodeMeta``, ``TaggedAddresses``), a ``ListOf`` (a selector continues into
every element: ``Checks.Status``) or ``SCALAR``. Field names match without
regard to case, as Consul's do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Scalar:
    pass


@dataclass(frozen=True, slots=True)
class MapOf:
    value: Shape


@dataclass(frozen=True, slots=True)
class ListOf:
    item: Shape


@dataclass(frozen=True, slots=True)
class Struct:
    fields: Mapping[str, Shape]
    _folded: Mapping[str, Shape] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_folded", {k.lower(): v for k, v in self.fields.items()})

    def get(self, name: str) -> Shape | None:
        return self._folded.get(name.lower())


Shape = Scalar | MapOf | ListOf | Struct

SCALAR = Scalar()
_STRINGS = MapOf(SCALAR)
_TAGS = ListOf(SCALAR)


def _struct(scalars: Sequence[str], **others: Shape) -> Struct:
    return Struct({**dict.fromkeys(scalars, SCALAR), **others})


_WEIGHTS = _struct(("Passing", "Warning"))
_SERVICE_ADDRESS = _struct(("Address", "Port"))
_UPSTREAM = _struct(
    (
        "DestinationType",
        "DestinationNamespace",
        "DestinationPartition",
        "DestinationPeer",
        "DestinationName",
        "Datacenter",
        "LocalBindAddress",
        "LocalBindPort",
        "LocalBindSocketPath",
        "LocalBindSocketMode",
        "MeshGateway",
        "CentrallyConfigured",
    )
)
_PROXY = _struct(
    (
        "DestinationServiceName",
        "DestinationServiceID",
        "LocalServiceAddress",
        "LocalServicePort",
        "LocalServiceSocketPath",
        "Mode",
        "TransparentProxy",
        "MeshGateway",
        "Expose",
    ),
    Upstreams=ListOf(_UPSTREAM),
    Config=_STRINGS,
)
_CONNECT = _struct(("Native", "SidecarService"))
_LOCALITY = _struct(("Region", "Zone"))

NODE = _struct(
    ("ID", "Node", "Address", "Datacenter", "Partition", "PeerName", "CreateIndex", "ModifyIndex"),
    TaggedAddresses=_STRINGS,
    Meta=_STRINGS,
    Locality=_LOCALITY,
)

AGENT_SERVICE = _struct(
    (
        "Kind",
        "ID",
        "Service",
        "Port",
        "Address",
        "SocketPath",
        "EnableTagOverride",
        "ContentHash",
        "Namespace",
        "Partition",
        "PeerName",
        "Datacenter",
        "CreateIndex",
        "ModifyIndex",
    ),
    Tags=_TAGS,
    Meta=_STRINGS,
    TaggedAddresses=MapOf(_SERVICE_ADDRESS),
    Weights=_WEIGHTS,
    Proxy=_PROXY,
    Connect=_CONNECT,
    Locality=_LOCALITY,
)

HEALTH_CHECK = _struct(
    (
        "Node",
        "CheckID",
        "Name",
        "Status",
        "Notes",
        "Output",
        "ServiceID",
        "ServiceName",
        "Type",
        "Interval",
        "Timeout",
        "ExposedPort",
        "Namespace",
        "Partition",
        "PeerName",
        "CreateIndex",
        "ModifyIndex",
    ),
    ServiceTags=_TAGS,
    Definition=MapOf(SCALAR),
)

SERVICE_NODE = _struct(
    (
        "ID",
        "Node",
        "Address",
        "Datacenter",
        "ServiceKind",
        "ServiceID",
        "ServiceName",
        "ServiceAddress",
        "ServicePort",
        "ServiceEnableTagOverride",
        "ServiceSocketPath",
        "Namespace",
        "Partition",
        "PeerName",
        "CreateIndex",
        "ModifyIndex",
    ),
    TaggedAddresses=_STRINGS,
    NodeMeta=_STRINGS,
    ServiceTags=_TAGS,
    ServiceMeta=_STRINGS,
    ServiceTaggedAddresses=MapOf(_SERVICE_ADDRESS),
    ServiceWeights=_WEIGHTS,
    ServiceProxy=_PROXY,
    ServiceConnect=_CONNECT,
    Locality=_LOCALITY,
    ServiceLocality=_LOCALITY,
)

CHECK_SERVICE_NODE = Struct(
    {"Node": NODE, "Service": AGENT_SERVICE, "Checks": ListOf(HEALTH_CHECK)}
)

MEMBER = _struct(
    (
        "Name",
        "Addr",
        "Port",
        "Status",
        "ProtocolMin",
        "ProtocolMax",
        "ProtocolCur",
        "DelegateMin",
        "DelegateMax",
        "DelegateCur",
    ),
    Tags=_STRINGS,
)

# /v1/catalog/services answers a map of names to tags; Consul filters the
# service instances behind it.
CATALOG_SERVICES = SERVICE_NODE

# /v1/connect/intentions: the selectors Consul documents for the list
# (website/content/api-docs/connect/intentions.mdx, "Filtering"), and the
# Raft indexes its Intention struct embeds.
INTENTION = _struct(
    (
        "ID",
        "Description",
        "SourceNS",
        "SourceName",
        "DestinationNS",
        "DestinationName",
        "SourceType",
        "Action",
        "Precedence",
        "CreateIndex",
        "ModifyIndex",
    ),
    Meta=_STRINGS,
)
