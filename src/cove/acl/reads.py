"""What the ACL object stores share: reading tokens, policies and roles
from the store, and rendering them in Consul's JSON shapes.

Store writes live beside it (``tokens``, ``policies``); ``objects``
combines them. Every write is one store transaction whose comparisons keep
names unique and updates from being lost; a request that fails changes
nothing."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cove.acl import model as m
from cove.acl.rules import Rules, parse
from cove.clock import Clock
from cove.codec import dumps, loads
from cove.errors import Conflict, InvalidArgument, PermissionDenied
from cove.store.base import Compare, KeyValue, Op, Store

NOT_FOUND = "ACL not found"


def format_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def content_hash(d: dict[str, Any]) -> str:
    return base64.b64encode(hashlib.sha256(dumps(d)).digest()).decode()


class AclReads:
    """``hash_secret`` turns a SecretID into its stored hash; ``changed``
    is called after every write (the service drops resolved tokens);
    ``parse_rules`` checks a policy's rules (a remembering parser)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        hash_secret: Callable[[str], str],
        changed: Callable[[], None],
        parse_rules: Callable[[str], Rules] = parse,
    ) -> None:
        self.store = store
        self.clock = clock
        self._hash = hash_secret
        self._changed = changed
        self._parse = parse_rules

    # -- reads ------------------------------------------------------------

    def _get(self, key: str) -> tuple[dict[str, Any], KeyValue] | None:
        kv = self.store.get(key)
        return None if kv is None else (loads(kv.value), kv)

    def token_by_hash(self, secret_hash: str) -> m.Token | None:
        kv = self.store.get(m.SECRETS + secret_hash)
        if kv is None:
            return None
        hit = self._get(m.TOKENS + kv.value.decode())
        return None if hit is None else m.Token.from_store(hit[0])

    def _token(self, accessor: str) -> tuple[m.Token, KeyValue]:
        hit = self._get(m.TOKENS + m.seg(accessor))
        if hit is None:
            raise PermissionDenied(NOT_FOUND)
        return m.Token.from_store(hit[0]), hit[1]

    def policy(self, pid: str) -> m.Policy | None:
        hit = self._get(m.POLICIES + m.seg(pid))
        return None if hit is None else m.Policy.from_store(hit[0])

    def role(self, rid: str) -> m.Role | None:
        hit = self._get(m.ROLES + m.seg(rid))
        return None if hit is None else m.Role.from_store(hit[0])

    def _id_by_name(self, names_prefix: str, name: str) -> str | None:
        kv = self.store.get(names_prefix + m.seg(name))
        return kv.value.decode() if kv is not None else None

    # -- rendering --------------------------------------------------------

    def _policy_links(self, ids: tuple[str, ...]) -> list[dict[str, str]]:
        out = []
        for pid in ids:
            p = self.policy(pid)
            if p is not None:  # a deleted policy's link just disappears
                out.append({"ID": p.id, "Name": p.name})
        return out

    def token_json(self, t: m.Token, kv: KeyValue, secret: str | None = None) -> dict[str, Any]:
        roles = []
        for rid in t.roles:
            r = self.role(rid)
            if r is not None:
                roles.append({"ID": r.id, "Name": r.name})
        d: dict[str, Any] = {
            "AccessorID": t.accessor_id,
            "SecretID": secret if secret is not None else m.HIDDEN,
            "Description": t.description,
            "Policies": self._policy_links(t.policies),
            "Roles": roles,
            "ServiceIdentities": _service_ids(t.service_identities),
            "NodeIdentities": _node_ids(t.node_identities),
            "TemplatedPolicies": [tp.to_json() for tp in t.templated] or None,
            "Local": t.local,
            "CreateTime": t.create_time,
            "Hash": content_hash(t.to_store()),
            "CreateIndex": kv.create_revision,
            "ModifyIndex": kv.mod_revision,
        }
        if t.expiration_time is not None:
            d["ExpirationTime"] = format_time(t.expiration_time)
        return d

    def policy_json(self, p: m.Policy, kv: KeyValue, *, stub: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "ID": p.id,
            "Name": p.name,
            "Description": p.description,
            "Datacenters": list(p.datacenters) or None,
            "Hash": content_hash(p.to_store()),
            "CreateIndex": kv.create_revision,
            "ModifyIndex": kv.mod_revision,
        }
        if not stub:
            d["Rules"] = p.rules
        return d

    def role_json(self, r: m.Role, kv: KeyValue) -> dict[str, Any]:
        return {
            "ID": r.id,
            "Name": r.name,
            "Description": r.description,
            "Policies": self._policy_links(r.policies),
            "ServiceIdentities": _service_ids(r.service_identities),
            "NodeIdentities": _node_ids(r.node_identities),
            "TemplatedPolicies": [tp.to_json() for tp in r.templated] or None,
            "Hash": content_hash(r.to_store()),
            "CreateIndex": kv.create_revision,
            "ModifyIndex": kv.mod_revision,
        }

    def _cas(self, kv: KeyValue, ops: list[Op], compares: list[Compare] | None = None) -> None:
        done = self.store.txn([Compare.mod_is(kv.key, kv.mod_revision), *(compares or [])], ops)
        if not done.succeeded:
            raise Conflict("ACL object changed concurrently (or its name is taken); try again")
        self._changed()

    def _policy_ids(self, d: dict[str, Any], what: str) -> tuple[str, ...]:
        out = []
        for ident, name in m.links(d, "Policies", what):
            if ident:
                if self.policy(ident) is None:
                    raise InvalidArgument(f'No such ACL policy with ID "{ident}"')
            else:
                found = self._id_by_name(m.POLICY_NAMES, name)
                if found is None:
                    raise InvalidArgument(f'No such ACL policy with name "{name}"')
                ident = found
            out.append(ident)
        return tuple(dict.fromkeys(out))

    def _role_ids(self, d: dict[str, Any], what: str) -> tuple[str, ...]:
        out = []
        for ident, name in m.links(d, "Roles", what):
            if ident:
                if self.role(ident) is None:
                    raise InvalidArgument(f'No such ACL role with ID "{ident}"')
            else:
                found = self._id_by_name(m.ROLE_NAMES, name)
                if found is None:
                    raise InvalidArgument(f'No such ACL role with name "{name}"')
                ident = found
            out.append(ident)
        return tuple(dict.fromkeys(out))


def _service_ids(ids: tuple[m.Identity, ...]) -> list[dict[str, Any]] | None:
    return [{"ServiceName": i.name, "Datacenters": list(i.datacenters)} for i in ids] or None


def _node_ids(ids: tuple[m.Identity, ...]) -> list[dict[str, Any]] | None:
    return [
        {"NodeName": i.name, "Datacenter": i.datacenters[0] if i.datacenters else ""} for i in ids
    ] or None
