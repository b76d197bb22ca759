"""Consul intentions (``/v1/connect/intentions``), stored and compiled into
cove's kernel network policy instead of being enforced by sidecar proxies.

Store keys (under this package's ``policy/`` prefix):

- ``policy/intentions/<id>``          the intention (JSON, Consul's fields)
- ``policy/intention-pairs/<src>/<dst>``  its ID: one intention per pair

Precedence is Consul's (namespaces are always ``default`` here): exact
source and destination 9, ``*`` source to an exact destination 8, an exact
source to ``*`` 6, ``*`` to ``*`` 5. The highest precedence that matches a
pair decides; at equal precedence a deny is tried first.
"""

from __future__ import annotations

import builtins
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cove.errors import CasFailed, CoveError, InvalidArgument, NotFound
from cove.store.base import Compare, Delete, KeyValue, Put, Store

INTENTIONS = "policy/intentions/"
PAIRS = "policy/intention-pairs/"
WILDCARD = "*"
ALLOW = "allow"
DENY = "deny"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def precedence(source: str, dest: str) -> int:
    """Consul's precedence for the default namespace (9, 8, 6 or 5)."""
    if dest == WILDCARD:
        return 5 if source == WILDCARD else 6
    return 8 if source == WILDCARD else 9


def check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{what} must be set")
    if name != WILDCARD and not _NAME.match(name):
        raise InvalidArgument(
            f"{what} {name!r} is not a service name: letters, digits, '_', '.', '-' or"
            " exactly '*' (partial wildcards are not allowed)"
        )
    return name


def check_action(action: Any) -> str:
    if not isinstance(action, str) or action.lower() not in (ALLOW, DENY):
        raise InvalidArgument("Action must be set to 'allow' or 'deny'")
    return action.lower()


def check_id(text: str) -> str:
    if not _ID.match(text):
        raise InvalidArgument(f"Invalid intention ID {text!r}: expected a UUID")
    return text


@dataclass(frozen=True, slots=True)
class Intention:
    id: str
    source: str
    dest: str
    action: str
    description: str = ""
    meta: Mapping[str, str] = field(default_factory=dict)
    created: float = 0.0
    updated: float = 0.0
    create_index: int = 0
    modify_index: int = 0

    @property
    def precedence(self) -> int:
        return precedence(self.source, self.dest)

    def label(self) -> str:
        return f"{self.source} => {self.dest}"

    def to_store(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "dest": self.dest,
            "action": self.action,
            "description": self.description,
            "meta": dict(self.meta),
            "created": self.created,
            "updated": self.updated,
        }

    @classmethod
    def from_kv(cls, kv: KeyValue) -> Intention:
        d = json.loads(kv.value)
        return cls(
            id=str(d["id"]),
            source=str(d["source"]),
            dest=str(d["dest"]),
            action=str(d["action"]),
            description=str(d.get("description") or ""),
            meta={str(k): str(v) for k, v in (d.get("meta") or {}).items()},
            created=float(d.get("created") or 0.0),
            updated=float(d.get("updated") or 0.0),
            create_index=kv.create_revision,
            modify_index=kv.mod_revision,
        )

    def to_consul(self) -> dict[str, Any]:
        """Consul's JSON shape (api.Intention)."""
        return {
            "ID": self.id,
            "Description": self.description,
            "SourceNS": "default",
            "SourceName": self.source,
            "DestinationNS": "default",
            "DestinationName": self.dest,
            "SourceType": "consul",
            "Action": self.action,
            "Meta": dict(self.meta),
            "Precedence": self.precedence,
            "CreatedAt": _rfc3339(self.created),
            "UpdatedAt": _rfc3339(self.updated),
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }

    def matches(self, source: str, dest: str) -> bool:
        return self.source in (WILDCARD, source) and self.dest in (WILDCARD, dest)


def sort_key(i: Intention) -> tuple[int, int, str, str, str]:
    """Highest precedence first; a deny before an allow of equal precedence."""
    return (-i.precedence, 0 if i.action == DENY else 1, i.source, i.dest, i.id)


def _rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _pair_key(source: str, dest: str) -> str:
    return f"{PAIRS}{source.lower()}/{dest.lower()}"


def _meta(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidArgument("Meta must be a map of strings")
    return {str(k): v for k, v in value.items()}


def parse_body(body: Any) -> dict[str, Any]:
    """Validate an ``api.Intention`` body (create/update). Raises
    ``InvalidArgument`` naming the problem."""
    if not isinstance(body, Mapping):
        raise InvalidArgument("Request decode failed: expected a JSON object")
    for ns in ("SourceNS", "DestinationNS"):
        if body.get(ns) not in (None, "", "default"):
            raise InvalidArgument(f"{ns} must be 'default': cove has no namespaces")
    stype = body.get("SourceType")
    if stype not in (None, "", "consul"):
        raise InvalidArgument(f"SourceType must be 'consul', not {stype!r}")
    if body.get("Permissions"):
        raise InvalidArgument(
            "Permissions (L7 intentions) are not supported: cove enforces intentions at L4"
        )
    return {
        "source": check_name(body.get("SourceName"), "SourceName"),
        "dest": check_name(body.get("DestinationName"), "DestinationName"),
        "action": check_action(body.get("Action")),
        "description": str(body.get("Description") or ""),
        "meta": _meta(body.get("Meta")),
    }


class IntentionService:
    """Intentions in the store: each change is one transaction."""

    def __init__(self, store: Store, now: Callable[[], float] = time.time) -> None:
        self._store = store
        self._now = now

    @property
    def revision(self) -> int:
        return self._store.revision

    def list(self) -> builtins.list[Intention]:
        return self.list_at()[0]

    def list_at(self) -> tuple[builtins.list[Intention], int]:
        """Every intention, highest precedence first, and the store revision
        they were read at (for blocking queries)."""
        found = self._store.range(INTENTIONS)
        out = []
        for kv in found.kvs:
            try:
                out.append(Intention.from_kv(kv))
            except (ValueError, KeyError, TypeError):
                continue
        return sorted(out, key=sort_key), found.revision

    def get(self, intention_id: str) -> Intention | None:
        kv = self._store.get(INTENTIONS + intention_id)
        return None if kv is None else Intention.from_kv(kv)

    def exact(self, source: str, dest: str) -> Intention | None:
        kv = self._store.get(_pair_key(source, dest))
        return None if kv is None else self.get(kv.value.decode())

    def create(self, fields: Mapping[str, Any]) -> Intention:
        now = self._now()
        i = Intention(id=str(uuid.uuid4()), created=now, updated=now, **fields)
        pair = _pair_key(i.source, i.dest)
        result = self._store.txn(
            [Compare.absent(pair)],
            [
                Put(INTENTIONS + i.id, json.dumps(i.to_store()).encode()),
                Put(pair, i.id.encode()),
            ],
        )
        if not result.succeeded:
            raise CoveError(f"duplicate intention found: {i.label()}")
        return i

    def update(self, intention_id: str, fields: Mapping[str, Any]) -> Intention:
        """Replace an intention's fields (its pair may change, if free)."""
        kv = self._store.get(INTENTIONS + intention_id)
        if kv is None:
            raise NotFound(f"Intention not found: {intention_id}")
        old = Intention.from_kv(kv)
        new = replace(old, updated=self._now(), **fields)
        compares = [Compare.mod_is(INTENTIONS + intention_id, kv.mod_revision)]
        ops: builtins.list[Any] = [Put(INTENTIONS + new.id, json.dumps(new.to_store()).encode())]
        old_pair, new_pair = _pair_key(old.source, old.dest), _pair_key(new.source, new.dest)
        if old_pair != new_pair:
            compares.append(Compare.absent(new_pair))
            ops += [Delete(old_pair), Put(new_pair, new.id.encode())]
        if not self._store.txn(compares, ops).succeeded:
            if self._store.get(new_pair) is not None:
                raise CoveError(f"duplicate intention found: {new.label()}")
            raise CasFailed("the intention changed while it was updated; try again")
        return new

    def upsert_exact(self, fields: Mapping[str, Any]) -> Intention:
        for _ in range(5):
            found = self.exact(fields["source"], fields["dest"])
            try:
                if found is None:
                    return self.create(fields)
                return self.update(found.id, fields)
            except (CasFailed, CoveError) as exc:
                if type(exc) not in (CasFailed, CoveError):
                    raise
        raise CasFailed("the intention kept changing; try again")

    def delete(self, intention_id: str) -> Intention:
        kv = self._store.get(INTENTIONS + intention_id)
        if kv is None:
            raise NotFound(f"Intention not found: {intention_id}")
        old = Intention.from_kv(kv)
        result = self._store.txn(
            [Compare.mod_is(INTENTIONS + intention_id, kv.mod_revision)],
            [Delete(INTENTIONS + intention_id), Delete(_pair_key(old.source, old.dest))],
        )
        if not result.succeeded:
            raise CasFailed("the intention changed while it was deleted; try again")
        return old

    def match(self, by: str, name: str) -> builtins.list[Intention]:
        """Intentions that apply to ``name`` as source or destination,
        highest precedence first (``/v1/connect/intentions/match``)."""
        if by == "source":
            return [i for i in self.list() if i.source in (WILDCARD, name)]
        return [i for i in self.list() if i.dest in (WILDCARD, name)]

    def decide(self, source: str, dest: str) -> Intention | None:
        """The intention that decides ``source`` -> ``dest``, if any."""
        return next((i for i in self.list() if i.matches(source, dest)), None)
