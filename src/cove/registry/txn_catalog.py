"""The Node, Service and Check operations of /v1/txn (Consul's
agent/consul/state/txn.go), planned inside the same store transaction as
the KV operations beside them: all of them commit or none.

A later operation sees what an earlier one of the same transaction wrote
(an overlay over the catalog's keys), as in Consul."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cove.codec import dumps, loads
from cove.errors import InvalidArgument
from cove.registry import types as t
from cove.registry.decode import fold, service_from_json, string_map, text
from cove.registry.txn import Tx
from cove.store.base import Delete, Put

VERBS = ("get", "set", "cas", "delete", "delete-cas")


@dataclass(frozen=True, slots=True)
class CatalogOp:
    kind: str  # "Node", "Service" or "Check"
    verb: str
    node: str
    body: dict[str, Any] = field(default_factory=dict)  # the record, Consul's field names
    index: int = 0  # ModifyIndex, for cas and delete-cas

    @property
    def service_name(self) -> str:
        return str(self.body.get("Service", "")) if self.kind == "Service" else ""


def parse(kind: str, raw: Any, i: int) -> CatalogOp:
    """One Node/Service/Check operation of a txn body; ``InvalidArgument``
    naming what is wrong."""
    d = fold(raw, f"operation {i}")
    verb = text(d, "verb", "Verb")
    if verb not in VERBS:
        raise InvalidArgument(f'operation {i}: unknown {kind} verb "{verb}"')
    if kind == "Node":
        n = fold(d.get("node") or {}, f"operation {i} Node")
        name = text(n, "node", "Node")
        if not name:
            raise InvalidArgument(f"operation {i}: Node.Node is required")
        if verb in ("set", "cas") and not text(n, "address", "Address"):
            raise InvalidArgument(f"operation {i}: Node.Address is required")
        body = {
            "ID": text(n, "id", "ID"),
            "Node": name,
            "Address": text(n, "address", "Address"),
            "TaggedAddresses": string_map(n, "taggedaddresses", "TaggedAddresses"),
            "Meta": string_map(n, "meta", "Meta"),
        }
        return CatalogOp(kind, verb, name, body, _index(n))
    if kind == "Service":
        node = text(d, "node", "Node")
        if not node:
            raise InvalidArgument(f"operation {i}: Node is required for a Service operation")
        raw_svc = d.get("service") or {}
        s = fold(raw_svc, f"operation {i} Service")
        if verb in ("set", "cas"):
            inst, checks = service_from_json(raw_svc, node)
            if checks:
                raise InvalidArgument(f"operation {i}: use Check operations for checks")
            body = inst.to_json()
        else:
            sid = text(s, "id", "ID")
            if not sid:
                raise InvalidArgument(f"operation {i}: Service.ID is required")
            body = {"ID": sid, "Node": node}
        return CatalogOp(kind, verb, node, body, _index(s))
    c = fold(d.get("check") or {}, f"operation {i} Check")
    node = text(c, "node", "Node")
    cid = text(c, "checkid", "CheckID")
    if not node or not cid:
        raise InvalidArgument(f"operation {i}: Check.Node and Check.CheckID are required")
    status = text(c, "status", "Status") or str(t.Status.CRITICAL)
    try:
        t.Status(status)
    except ValueError as exc:
        raise InvalidArgument(f"operation {i}: invalid check status {status!r}") from exc
    body = {
        "Node": node,
        "CheckID": cid,
        "Name": text(c, "name", "Name") or cid,
        "Status": status,
        "Notes": text(c, "notes", "Notes"),
        "Output": text(c, "output", "Output")[: t.OUTPUT_LIMIT],
        "ServiceID": text(c, "serviceid", "ServiceID"),
    }
    return CatalogOp("Check", verb, node, body, _index(c))


def _index(d: dict[str, Any]) -> int:
    v = d.get("modifyindex")
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise InvalidArgument(f"ModifyIndex must be a non-negative integer, got {v!r}")
    return v


@dataclass(slots=True)
class _Slot:
    value: dict[str, Any] | None
    create: int
    mod: int
    dirty: bool = False


@dataclass(frozen=True, slots=True)
class Result:
    """A Node/Service/Check result, rendered once the commit's revision is
    known."""

    kind: str
    slot: _Slot

    def render(self, revision: int) -> dict[str, Any]:
        assert self.slot.value is not None
        create, mod = self.slot.create, self.slot.mod
        if self.slot.dirty:
            create, mod = (create or revision), revision
        body = {
            k: v for k, v in self.slot.value.items() if not (self.kind == "Service" and k == "Node")
        }
        return {self.kind: {**body, "CreateIndex": create, "ModifyIndex": mod}}


class CatalogTxn:
    """The catalog part of one transaction plan."""

    def __init__(self, tx: Tx, datacenter: str) -> None:
        self._tx = tx
        self._dc = datacenter
        self.slots: dict[str, _Slot] = {}

    def _get(self, key: str) -> _Slot:
        if key not in self.slots:
            kv = self._tx.get(key)
            self.slots[key] = (
                _Slot(loads(kv.value), kv.create_revision, kv.mod_revision)
                if kv is not None
                else _Slot(None, 0, 0)
            )
        return self.slots[key]

    def _write(self, key: str, value: dict[str, Any] | None) -> _Slot:
        slot = self._get(key)
        slot.value = value
        slot.dirty = True
        return slot

    def _under(self, prefix: str) -> list[tuple[str, _Slot]]:
        for kv in self._tx.range(prefix):
            self._get(kv.key)
        return [(k, s) for k, s in self.slots.items() if k.startswith(prefix) and s.value]

    def _service(self, node: str, sid: str) -> tuple[str, _Slot] | None:
        for key, slot in self._under(t.SERVICES):
            assert slot.value is not None
            if slot.value.get("Node") == node and slot.value.get("ID") == sid:
                return key, slot
        return None

    def _check(self, node: str, cid: str) -> tuple[str, _Slot] | None:
        for prefix in (f"{t.NODE_CHECKS}{t.seg(node)}/", t.CHECKS):
            for key, slot in self._under(prefix):
                assert slot.value is not None
                if slot.value.get("Node") == node and slot.value.get("CheckID") == cid:
                    return key, slot
        return None

    def flush(self) -> None:
        """Plan the overlay's changes into the transaction."""
        for key, slot in self.slots.items():
            if not slot.dirty:
                continue
            if slot.value is None:
                if slot.mod:
                    self._tx.add(Delete(key))
            else:
                self._tx.add(Put(key, dumps(slot.value)))

    def apply(self, op: CatalogOp, results: list[Any]) -> str:
        """Apply ``op``; an error message when it fails."""
        if op.kind == "Node":
            return self._node(op, results)
        if op.kind == "Service":
            return self._service_op(op, results)
        return self._check_op(op, results)

    def _node(self, op: CatalogOp, results: list[Any]) -> str:
        key = t.node_key(op.node)
        slot = self._get(key)
        if op.verb == "get":
            if slot.value is None:
                return f'node "{op.node}" doesn\'t exist'
            results.append(Result("Node", slot))
            return ""
        if op.verb in ("cas", "delete-cas") and slot.mod != op.index:
            what = "set" if op.verb == "cas" else "delete"
            return f'failed to {what} node "{op.node}", index is stale'
        if op.verb in ("set", "cas"):
            value = {**op.body, "Datacenter": self._dc}
            if slot.value != value:
                self._write(key, value)
            results.append(Result("Node", slot))
            return ""
        if slot.value is None:
            return ""  # deleting what is not there: nothing to do, as Consul
        self._write(key, None)
        for skey, sslot in self._under(t.SERVICES):
            if sslot.value and sslot.value.get("Node") == op.node:
                self._write(skey, None)
        for prefix in (f"{t.NODE_CHECKS}{t.seg(op.node)}/", t.CHECKS):
            for ckey, cslot in self._under(prefix):
                if cslot.value and cslot.value.get("Node") == op.node:
                    self._write(ckey, None)
        self._tx.add(Delete(f"{t.AGENT}{t.seg(op.node)}/", prefix=True))
        return ""

    def _service_op(self, op: CatalogOp, results: list[Any]) -> str:
        sid = str(op.body["ID"])
        found = self._service(op.node, sid)
        if op.verb == "get":
            if found is None:
                return f'service "{sid}" on node "{op.node}" doesn\'t exist'
            results.append(Result("Service", found[1]))
            return ""
        mod = found[1].mod if found else 0
        if op.verb in ("cas", "delete-cas") and mod != op.index:
            what = "set" if op.verb == "cas" else "delete"
            return f'failed to {what} service "{sid}" on node "{op.node}", index is stale'
        if op.verb in ("set", "cas"):
            if self._get(t.node_key(op.node)).value is None:
                return f'node "{op.node}" doesn\'t exist'
            key = t.service_key(op.service_name, op.node, sid)
            if found is not None and found[0] != key:  # renamed: the old key goes
                self._write(found[0], None)
            results.append(Result("Service", self._write(key, dict(op.body))))
            return ""
        if found is None:
            return ""
        self._write(found[0], None)
        for ckey, cslot in self._under(t.CHECKS):
            if (
                cslot.value
                and cslot.value.get("Node") == op.node
                and cslot.value.get("ServiceID") == sid
            ):
                self._write(ckey, None)
        return ""

    def _check_op(self, op: CatalogOp, results: list[Any]) -> str:
        cid = str(op.body["CheckID"])
        found = self._check(op.node, cid)
        if op.verb == "get":
            if found is None:
                return f'check "{cid}" on node "{op.node}" doesn\'t exist'
            results.append(Result("Check", found[1]))
            return ""
        mod = found[1].mod if found else 0
        if op.verb in ("cas", "delete-cas") and mod != op.index:
            what = "set" if op.verb == "cas" else "delete"
            return f'failed to {what} check "{cid}" on node "{op.node}", index is stale'
        if op.verb in ("set", "cas"):
            if self._get(t.node_key(op.node)).value is None:
                return f'node "{op.node}" doesn\'t exist'
            body = dict(op.body)
            service_name, tags = "", []
            if body["ServiceID"]:
                owner = self._service(op.node, str(body["ServiceID"]))
                if owner is None:
                    return f'Unknown service ID "{body["ServiceID"]}" for check "{cid}"'
                assert owner[1].value is not None
                service_name = str(owner[1].value.get("Service", ""))
                tags = list(owner[1].value.get("Tags") or [])
            hc = t.HealthCheck(
                id=cid,
                name=str(body["Name"]),
                node=op.node,
                status=t.Status(body["Status"]),
                service_id=str(body["ServiceID"]),
                service_name=service_name,
                service_tags=tuple(tags),
                notes=str(body["Notes"]),
                output=str(body["Output"]),
            )
            key = t.check_key(service_name, op.node, cid)
            if found is not None and found[0] != key:
                self._write(found[0], None)
            results.append(Result("Check", self._write(key, hc.to_json())))
            return ""
        if found is not None:
            self._write(found[0], None)
        return ""
