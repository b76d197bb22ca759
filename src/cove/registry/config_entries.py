"""Config entries (Consul's /v1/config) of the kinds that mean something
without Connect: ``service-defaults`` (a service's protocol and meta) and
``proxy-defaults`` (stored and returned as given, name ``global``). The
other kinds configure Consul's service mesh, which cove does not have: they
are refused with a 400 that says so, never stored and ignored."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cove.codec import dumps
from cove.errors import InvalidArgument, NotFound
from cove.registry.decode import fold, string_map, text
from cove.registry.keys import CONFIG, seg
from cove.registry.queries import Answer, Decoded
from cove.registry.txn import Tx, transact
from cove.store.base import Delete, Put, Store

SERVICE_DEFAULTS = "service-defaults"
PROXY_DEFAULTS = "proxy-defaults"
KINDS = (SERVICE_DEFAULTS, PROXY_DEFAULTS)
# Consul's other kinds: all configure Connect (service mesh).
MESH_KINDS = (
    "service-router",
    "service-splitter",
    "service-resolver",
    "ingress-gateway",
    "terminating-gateway",
    "service-intentions",
    "mesh",
    "exported-services",
    "sameness-group",
    "api-gateway",
    "bound-api-gateway",
    "inline-certificate",
    "http-route",
    "tcp-route",
    "jwt-provider",
    "control-plane-request-limit",
)
PROTOCOLS = ("", "tcp", "http", "http2", "grpc")
# service-defaults fields that configure Connect's proxies.
_MESH_FIELDS = {
    "mode": "Mode",
    "transparentproxy": "TransparentProxy",
    "mutualtlsmode": "MutualTLSMode",
    "meshgateway": "MeshGateway",
    "expose": "Expose",
    "externalsni": "ExternalSNI",
    "upstreamconfig": "UpstreamConfig",
    "destination": "Destination",
    "maxinboundconnections": "MaxInboundConnections",
    "localconnecttimeoutms": "LocalConnectTimeoutMs",
    "localrequesttimeoutms": "LocalRequestTimeoutMs",
    "balanceinboundconnections": "BalanceInboundConnections",
    "envoyextensions": "EnvoyExtensions",
    "ratelimits": "RateLimits",
}
_SERVICE_FIELDS = {"kind", "name", "protocol", "meta", "namespace", "partition"}


def check_kind(kind: str) -> None:
    if kind in KINDS:
        return
    if kind in MESH_KINDS:
        raise InvalidArgument(
            f'config entry kind "{kind}" configures Consul Connect (service mesh), which cove'
            f" does not implement; cove keeps {' and '.join(KINDS)}"
        )
    raise InvalidArgument(f"invalid config entry kind: {kind}")


def key(kind: str, name: str) -> str:
    return f"{CONFIG}{seg(kind)}/{seg(name)}"


def parse(body: Any) -> dict[str, Any]:
    """A config entry from a PUT body, validated as Consul does; the entry
    as it is stored (Consul's field names)."""
    d = fold(body, "config entry")
    kind = text(d, "kind", "Kind")
    if not kind:
        raise InvalidArgument("Request decoding failed: Kind is required")
    check_kind(kind)
    name = text(d, "name", "Name")
    if not name:
        raise InvalidArgument("Name is required")
    for scope in ("namespace", "partition"):
        if text(d, scope, scope.title()) not in ("", "default"):
            raise InvalidArgument(f"cove has no {scope}s: leave {scope.title()} out")
    if kind == PROXY_DEFAULTS:
        if name != "global":
            raise InvalidArgument(f'invalid name ("{name}"), only "global" is supported')
        stored = {str(k): v for k, v in body.items() if str(k).lower() not in ("kind", "name")}
        return {"Kind": kind, "Name": name, **stored}
    for folded, field in _MESH_FIELDS.items():
        if d.get(folded) not in (None, "", {}, [], 0, False):
            raise InvalidArgument(
                f"service-defaults {field} configures Consul Connect's proxies, which cove"
                f" does not implement; remove {field}"
            )
    unknown = sorted(k for k in d if k not in _SERVICE_FIELDS and k not in _MESH_FIELDS)
    if unknown:
        raise InvalidArgument(f"Request decoding failed: invalid config key {unknown[0]!r}")
    protocol = text(d, "protocol", "Protocol")
    if protocol not in PROTOCOLS:
        raise InvalidArgument(
            f'invalid protocol "{protocol}": expected one of tcp, http, http2, grpc'
        )
    entry: dict[str, Any] = {"Kind": kind, "Name": name}
    if protocol:
        entry["Protocol"] = protocol
    meta = string_map(d, "meta", "Meta")
    if meta:
        entry["Meta"] = meta
    return entry


class ConfigEntries:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._decode = Decoded(10_000)

    def set(self, entry: Mapping[str, Any], cas: int | None = None) -> bool:
        """Write ``entry`` (from ``parse``); with ``cas``, only if its
        ModifyIndex is that (0: only if it does not exist yet)."""
        k = key(entry["Kind"], entry["Name"])

        def plan(tx: Tx) -> bool:
            if cas is not None:
                current = tx.get(k)
                if (current.mod_revision if current else 0) != cas:
                    return False
            tx.add(Put(k, dumps(dict(entry))))
            return True

        return transact(self._store, plan)[0]

    def delete(self, kind: str, name: str, cas: int | None = None) -> bool:
        check_kind(kind)
        k = key(kind, name)

        def plan(tx: Tx) -> bool:
            current = tx.get(k)
            if cas is not None and (current.mod_revision if current else 0) != cas:
                return False
            if current is not None:
                tx.add(Delete(k))
            return True

        return transact(self._store, plan)[0]

    def get(self, kind: str, name: str) -> Answer:
        check_kind(kind)
        k = key(kind, name)
        rev = self._store.revision
        kv = self._store.get(k)
        if kv is None:
            return Answer(None, 0, rev, (k,), found=False)
        data = {
            **self._decode(kv),
            "CreateIndex": kv.create_revision,
            "ModifyIndex": kv.mod_revision,
        }
        return Answer(data, kv.mod_revision, rev, (k,))

    def list(self, kind: str) -> Answer:
        check_kind(kind)
        prefix = f"{CONFIG}{seg(kind)}/"
        rr = self._store.range(prefix)
        out = [
            {**self._decode(kv), "CreateIndex": kv.create_revision, "ModifyIndex": kv.mod_revision}
            for kv in rr.kvs
        ]
        index = max((kv.mod_revision for kv in rr.kvs), default=0)
        return Answer(out, index, rr.revision, (prefix,))


def not_found(kind: str, name: str) -> NotFound:
    return NotFound(f'Config entry not found for "{kind}" / "{name}"')
