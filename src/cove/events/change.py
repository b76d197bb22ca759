"""What a store change means to a user: one ``Change`` per changed object.

The event stream is derived from the store, like every other view: each
write under a prefix the stream covers becomes a ``Change`` whose ``index``
is the store revision of the write (the ``X-Consul-Index`` the same change
shows on ``/v1``), so a client that saw index N resumes with ``since=N`` and
misses nothing. Keys the stream does not cover (IPAM, ACL secrets, sessions,
agent bookkeeping) give no change. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import unquote

from cove.model import CONTAINERS, ENDPOINTS, NETWORKS
from cove.runtime.keys import CLUSTER_STATUS, status_id
from cove.store.base import Event, EventType


class Kind(StrEnum):
    """What changed; ``--filter type=...`` takes these names."""

    CONTAINER = "container"
    NETWORK = "network"
    ENDPOINT = "endpoint"
    SERVICE = "service"
    CHECK = "check"
    NODE = "node"
    KV = "kv"
    POLICY = "policy"
    VIP = "vip"
    RESET = "reset"  # history was lost: re-read the state


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    # A container's process, as Docker names these (from cluster/status/).
    START = "start"
    DIE = "die"
    RESTART = "restart"


# cluster/status/<node>/<container id>: the owning agent's record of a
# container's process (cove.runtime.keys), written once per change of it.
PROCESS_STATUS = CLUSTER_STATUS

# The store prefixes the stream covers, and the kind each one gives.
PREFIXES: tuple[tuple[str, Kind], ...] = (
    (CONTAINERS, Kind.CONTAINER),
    (NETWORKS, Kind.NETWORK),
    (ENDPOINTS, Kind.ENDPOINT),
    ("registry/svc/", Kind.SERVICE),
    ("registry/chk/", Kind.CHECK),
    ("registry/nodechk/", Kind.CHECK),
    ("registry/nodes/", Kind.NODE),
    ("registry/kv/", Kind.KV),
    ("policy/", Kind.POLICY),
    ("lb/vips/", Kind.VIP),
)


@dataclass(frozen=True, slots=True)
class Change:
    """One changed object. ``name`` is the object's own name (a container's,
    a network's, a service's, a KV key); ``attrs`` are the few fields a
    watcher filters or shows on (a check's status and service, a
    container's desired state, an endpoint's address)."""

    index: int
    kind: Kind
    action: Action
    name: str
    attrs: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "type": self.kind.value,
            "action": self.action.value,
            "name": self.name,
            "attributes": dict(self.attrs),
        }


def kind_of(key: str) -> tuple[Kind, str] | None:
    """The kind of a store key and the rest of the key after its prefix."""
    for prefix, kind in PREFIXES:
        if key.startswith(prefix):
            return kind, key[len(prefix) :]
    return None


def _decode(raw: bytes) -> Mapping[str, Any]:
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def _float(value: Any) -> float:
    try:
        return float(value or 0.0)
    except (TypeError, ValueError):
        return 0.0


def process_change_of(event: Event) -> Change | None:
    """What a new ``cluster/status/`` record says happened to the process,
    told from the record before it: ``die`` (with ``exitCode``) when it
    finished again, ``start`` or, when the supervisor brought it back under
    its restart policy, ``restart`` when it started again. None for the
    rest (a created record, a removed one, a stop asked for but not done)."""
    if event.type is not EventType.PUT:
        return None
    new = _decode(event.kv.value)
    old = _decode(event.prev.value) if event.prev is not None else {}
    cid = status_id(event.kv.key)
    name = _str(new.get("name")) or _str(old.get("name")) or cid[:12]
    attrs = {"id": cid, "node": _str(new.get("node"))}
    status = new.get("status")
    finished = _float(new.get("finished_at"))
    started = _float(new.get("started_at"))
    if (
        status in ("exited", "restarting")
        and finished
        and finished != _float(old.get("finished_at"))
    ):
        attrs["exitCode"] = _str(new.get("exit_code"))
        return Change(event.revision, Kind.CONTAINER, Action.DIE, name, attrs)
    if status == "running" and started and started != _float(old.get("started_at")):
        restarted = old.get("status") == "restarting" or int(
            _float(new.get("restart_count"))
        ) > int(_float(old.get("restart_count")))
        action = Action.RESTART if restarted else Action.START
        return Change(event.revision, Kind.CONTAINER, action, name, attrs)
    return None


def change_of(event: Event) -> Change | None:
    """The change a store event stands for; None for keys the stream does
    not cover."""
    if event.kv.key.startswith(PROCESS_STATUS):
        return process_change_of(event)
    found = kind_of(event.kv.key)
    if found is None:
        return None
    kind, rest = found
    if event.type is EventType.DELETE:
        action = Action.DELETE
    elif event.kv.version == 1 or event.kv.create_revision == event.kv.mod_revision:
        action = Action.CREATE
    else:
        action = Action.UPDATE
    # A delete carries no value: describe the object by what it was.
    value = event.kv.value if event.type is EventType.PUT else b""
    if not value and event.prev is not None:
        value = event.prev.value
    parts = [unquote(p) for p in rest.split("/")]
    attrs: dict[str, str] = {}
    name = parts[-1]
    if kind is Kind.KV:
        name = rest
    elif kind is Kind.ENDPOINT:
        data = _decode(value)
        name = _str(data.get("container_name")) or parts[-1]
        attrs = {
            "network": parts[0],
            "ipv4": _str(data.get("ipv4")),
            "ipv6": _str(data.get("ipv6")),
        }
    elif kind is Kind.CONTAINER:
        data = _decode(value)
        attrs = {"desired": _str(data.get("desired"))}
        if data.get("networks"):
            attrs["networks"] = ",".join(str(n) for n in data["networks"])
    elif kind is Kind.SERVICE and len(parts) == 3:
        name = parts[0]
        attrs = {"node": parts[1], "id": parts[2]}
    elif kind is Kind.CHECK:
        data = _decode(value)
        if len(parts) == 3:  # registry/chk/<service>/<node>/<check id>
            attrs = {"service": parts[0], "node": parts[1]}
        elif len(parts) == 2:  # registry/nodechk/<node>/<check id>
            attrs = {"node": parts[0]}
        attrs["status"] = _str(data.get("Status"))
        if data.get("ServiceID"):
            attrs["service_id"] = _str(data.get("ServiceID"))
    elif kind is Kind.POLICY:
        data = _decode(value)
        attrs = {"network": _str(data.get("network"))}
    elif kind is Kind.VIP:
        data = _decode(value)
        name = _str(data.get("service")) or name
        attrs = {"address": _str(data.get("address"))}
    return Change(event.revision, kind, action, name, attrs)


def changes_of(events: Iterable[Event]) -> list[Change]:
    out = []
    for event in events:
        change = change_of(event)
        if change is not None:
            out.append(change)
    return out


@dataclass(frozen=True, slots=True)
class Filter:
    """``--filter key=value`` as Docker takes it: values of one key are
    alternatives (OR), different keys must all hold (AND). Keys: ``type``,
    ``action``, ``name``, and any attribute (``status``, ``service``,
    ``network``, ...)."""

    terms: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, items: Iterable[str]) -> Filter:
        """Raises ``ValueError`` naming the bad term."""
        terms: dict[str, set[str]] = {}
        for item in items:
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValueError(f"filter {item!r} is not key=value (e.g. type=container)")
            if key == "type":
                known = {k.value for k in Kind}
                if value not in known:
                    raise ValueError(
                        f"unknown event type {value!r}: expected one of {', '.join(sorted(known))}"
                    )
            terms.setdefault(key, set()).add(value.strip())
        return cls({k: frozenset(v) for k, v in terms.items()})

    def __call__(self, change: Change) -> bool:
        if change.kind is Kind.RESET:
            return True  # every watcher must learn that history was lost
        for key, wanted in self.terms.items():
            if key == "type":
                have = change.kind.value
            elif key == "action":
                have = change.action.value
            elif key == "name":
                have = change.name
            else:
                have = change.attrs.get(key, "")
            if have not in wanted:
                return False
        return True
