"""Tokens, policies and roles in the store: create, read, update, delete,
list, in Consul's JSON shapes. Every write is one store transaction whose
comparisons keep names unique and updates from being lost; a request that
fails changes nothing."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cove.acl import model as m
from cove.acl.rules import Rules, parse
from cove.clock import Clock
from cove.codec import dumps, loads
from cove.errors import Conflict, InvalidArgument, PermissionDenied
from cove.registry.types import parse_duration
from cove.store.base import Compare, Delete, KeyValue, Op, Put, Store

NOT_FOUND = "ACL not found"


def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _content_hash(d: dict[str, Any]) -> str:
    return base64.b64encode(hashlib.sha256(dumps(d)).digest()).decode()


class AclObjects:
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
            "Local": t.local,
            "CreateTime": t.create_time,
            "Hash": _content_hash(t.to_store()),
            "CreateIndex": kv.create_revision,
            "ModifyIndex": kv.mod_revision,
        }
        if t.expiration_time is not None:
            d["ExpirationTime"] = _time(t.expiration_time)
        return d

    def policy_json(self, p: m.Policy, kv: KeyValue, *, stub: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "ID": p.id,
            "Name": p.name,
            "Description": p.description,
            "Datacenters": list(p.datacenters) or None,
            "Hash": _content_hash(p.to_store()),
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
            "Hash": _content_hash(r.to_store()),
            "CreateIndex": kv.create_revision,
            "ModifyIndex": kv.mod_revision,
        }

    # -- built-ins and bootstrap ----------------------------------------------

    def ensure_builtins(self) -> None:
        p = m.MANAGEMENT_POLICY
        self.store.txn(
            [Compare.absent(m.POLICIES + p.id)],
            [
                Put(m.POLICIES + p.id, dumps(p.to_store())),
                Put(m.POLICY_NAMES + p.name, p.id.encode()),
            ],
        )
        anon = m.Token(
            m.ANONYMOUS_ID,
            self._hash(m.ANONYMOUS_SECRET),
            "Anonymous Token",
            create_time=_time(self.clock.time()),
        )
        self.store.txn([Compare.absent(m.TOKENS + anon.accessor_id)], self._token_puts(anon))

    def ensure_management(self, secret: str) -> None:
        """The token of ``--acl-initial-management``: created once, and it
        closes bootstrap as Consul's does."""
        if self.store.get(m.SECRETS + self._hash(secret)) is not None:
            return
        token = self._new_token(secret, "Initial Management Token", (m.MANAGEMENT_ID,))
        self.store.txn(
            [Compare.absent(m.SECRETS + token.secret_hash)],
            [*self._token_puts(token), Put(m.BOOTSTRAP, b"initial-management")],
        )
        self._changed()

    def bootstrap(self, secret: str | None = None) -> dict[str, Any]:
        if secret:
            m.check_uuid(secret, "BootstrapSecret")
        secret = secret or str(uuid.uuid4())
        token = self._new_token(secret, "Bootstrap Token (Global Management)", (m.MANAGEMENT_ID,))
        done = self.store.txn(
            [Compare.absent(m.BOOTSTRAP), Compare.absent(m.SECRETS + token.secret_hash)],
            [*self._token_puts(token), Put(m.BOOTSTRAP, b"bootstrap")],
        )
        if not done.succeeded:
            kv = self.store.get(m.BOOTSTRAP)
            reset = kv.mod_revision if kv is not None else 0
            raise PermissionDenied(f"ACL bootstrap no longer allowed (reset index: {reset})")
        self._changed()
        t, kv = self._token(token.accessor_id)
        return self.token_json(t, kv, secret)

    def _new_token(self, secret: str, description: str, policies: tuple[str, ...] = ()) -> m.Token:
        return m.Token(
            str(uuid.uuid4()),
            self._hash(secret),
            description,
            policies=policies,
            create_time=_time(self.clock.time()),
        )

    def _token_puts(self, t: m.Token) -> list[Op]:
        return [
            Put(m.TOKENS + m.seg(t.accessor_id), dumps(t.to_store())),
            Put(m.SECRETS + t.secret_hash, t.accessor_id.encode()),
        ]

    # -- tokens -------------------------------------------------------------

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

    def _expiration(self, d: dict[str, Any]) -> float | None:
        ttl = parse_duration(d.get("ExpirationTTL"), "ExpirationTTL")
        when = m.text(d, "ExpirationTime", "Token")
        if ttl and when:
            raise InvalidArgument("Token Expiration TTL and Expiration Time cannot both be set")
        if ttl:
            if ttl < 60:
                raise InvalidArgument("Token Expiration TTL must be at least 1 minute")
            return self.clock.time() + ttl
        if when:
            try:
                at = datetime.fromisoformat(when).timestamp()
            except ValueError as exc:
                raise InvalidArgument(f"Token ExpirationTime {when!r} is not RFC 3339") from exc
            if at <= self.clock.time():
                raise InvalidArgument("ExpirationTime cannot be in the past")
            return at
        return None

    def token_create(self, body: Any) -> dict[str, Any]:
        d = m.body_map(body, "Token")
        accessor = m.text(d, "AccessorID", "Token") or str(uuid.uuid4())
        secret = m.text(d, "SecretID", "Token") or str(uuid.uuid4())
        m.check_uuid(accessor, "AccessorID")
        m.check_uuid(secret, "SecretID")
        token = m.Token(
            accessor,
            self._hash(secret),
            m.text(d, "Description", "Token"),
            policies=self._policy_ids(d, "Token"),
            roles=self._role_ids(d, "Token"),
            service_identities=m.identities(d, "ServiceIdentities", "ServiceName", "Token"),
            node_identities=m.identities(d, "NodeIdentities", "NodeName", "Token"),
            local=bool(d.get("Local", False)),
            create_time=_time(self.clock.time()),
            expiration_time=self._expiration(d),
        )
        done = self.store.txn(
            [
                Compare.absent(m.TOKENS + m.seg(accessor)),
                Compare.absent(m.SECRETS + token.secret_hash),
            ],
            self._token_puts(token),
        )
        if not done.succeeded:
            raise InvalidArgument("Invalid Token: AccessorID or SecretID is already in use")
        self._changed()
        t, kv = self._token(accessor)
        return self.token_json(t, kv, secret)

    def token_read(self, accessor: str) -> dict[str, Any]:
        t, kv = self._token(accessor)
        return self.token_json(t, kv)

    def token_self(self, secret: str) -> dict[str, Any]:
        token = self.token_by_hash(self._hash(secret or m.ANONYMOUS_SECRET))
        if token is None:
            raise PermissionDenied(NOT_FOUND)
        t, kv = self._token(token.accessor_id)
        return self.token_json(t, kv, secret or m.ANONYMOUS_SECRET)

    def token_update(self, accessor: str, body: Any) -> dict[str, Any]:
        d = m.body_map(body, "Token")
        old, kv = self._token(accessor)
        given = m.text(d, "AccessorID", "Token")
        if given and given != accessor:
            raise InvalidArgument("Token Accessor ID in URL and payload do not match")
        secret = m.text(d, "SecretID", "Token")
        # A token read back and sent again carries "<hidden>" and its own
        # expiration: only a real change is refused.
        if secret and secret != m.HIDDEN and self._hash(secret) != old.secret_hash:
            raise InvalidArgument("Changing a token's SecretID is not permitted")
        if "Local" in d and bool(d["Local"]) != old.local:
            raise InvalidArgument("Cannot toggle local mode of a token")
        when = m.text(d, "ExpirationTime", "Token")
        same = old.expiration_time is not None and when == _time(old.expiration_time)
        if d.get("ExpirationTTL") or (when and not same):
            raise InvalidArgument("Cannot change expiration time of a token")
        new = m.Token(
            old.accessor_id,
            old.secret_hash,
            m.text(d, "Description", "Token"),
            policies=self._policy_ids(d, "Token"),
            roles=self._role_ids(d, "Token"),
            service_identities=m.identities(d, "ServiceIdentities", "ServiceName", "Token"),
            node_identities=m.identities(d, "NodeIdentities", "NodeName", "Token"),
            local=old.local,
            create_time=old.create_time,
            expiration_time=old.expiration_time,
        )
        self._cas(kv, [Put(kv.key, dumps(new.to_store()))])
        t, kv = self._token(accessor)
        return self.token_json(t, kv)

    def token_clone(self, accessor: str, body: Any) -> dict[str, Any]:
        d = m.body_map(body, "Token")
        old, _ = self._token(accessor)
        if old.accessor_id == m.ANONYMOUS_ID:
            raise InvalidArgument("Cannot clone the anonymous token")
        secret = str(uuid.uuid4())
        new = m.Token(
            str(uuid.uuid4()),
            self._hash(secret),
            m.text(d, "Description", "Token") or old.description,
            policies=old.policies,
            roles=old.roles,
            service_identities=old.service_identities,
            node_identities=old.node_identities,
            local=old.local,
            create_time=_time(self.clock.time()),
            expiration_time=old.expiration_time,
        )
        self.store.txn([], self._token_puts(new))
        self._changed()
        t, kv = self._token(new.accessor_id)
        return self.token_json(t, kv, secret)

    def token_delete(self, accessor: str, caller: str) -> None:
        if accessor == m.ANONYMOUS_ID:
            raise InvalidArgument("Delete operation not permitted on the anonymous token")
        try:
            old, kv = self._token(accessor)
        except PermissionDenied:
            return  # Consul: deleting a missing token succeeds
        if old.accessor_id == caller:
            raise InvalidArgument("Deletion of the request's authorization token is not permitted")
        self._cas(kv, [Delete(kv.key), Delete(m.SECRETS + old.secret_hash)])

    def tokens(self, policy: str = "", role: str = "") -> list[dict[str, Any]]:
        out = []
        for kv in self.store.range(m.TOKENS).kvs:
            t = m.Token.from_store(loads(kv.value))
            if policy and policy not in t.policies:
                continue
            if role and role not in t.roles:
                continue
            out.append(self.token_json(t, kv))
        return out

    def _cas(self, kv: KeyValue, ops: list[Op], compares: list[Compare] | None = None) -> None:
        done = self.store.txn([Compare.mod_is(kv.key, kv.mod_revision), *(compares or [])], ops)
        if not done.succeeded:
            raise Conflict("ACL object changed concurrently (or its name is taken); try again")
        self._changed()

    # -- policies -------------------------------------------------------------

    def _policy_from(self, d: dict[str, Any], pid: str) -> m.Policy:
        name = m.text(d, "Name", "Policy")
        m.check_policy_name(name)
        rules = m.text(d, "Rules", "Policy")
        self._parse(rules)  # a malformed rule is refused here, before anything is stored
        dcs = d.get("Datacenters") or []
        if not isinstance(dcs, list) or not all(isinstance(x, str) for x in dcs):
            raise InvalidArgument("Policy decode failed: Datacenters must be a list of strings")
        return m.Policy(pid, name, m.text(d, "Description", "Policy"), rules, tuple(dcs))

    def policy_create(self, body: Any) -> dict[str, Any]:
        d = m.body_map(body, "Policy")
        if m.text(d, "ID", "Policy"):
            raise InvalidArgument("Cannot specify the ID when creating a new policy")
        p = self._policy_from(d, str(uuid.uuid4()))
        name_key = m.POLICY_NAMES + m.seg(p.name)
        done = self.store.txn(
            [Compare.absent(name_key)],
            [Put(m.POLICIES + p.id, dumps(p.to_store())), Put(name_key, p.id.encode())],
        )
        if not done.succeeded:
            raise InvalidArgument(f"Invalid Policy: A Policy with Name {p.name!r} already exists")
        self._changed()
        return self.policy_read(p.id)

    def _policy_kv(self, pid: str) -> tuple[m.Policy, KeyValue]:
        hit = self._get(m.POLICIES + m.seg(pid))
        if hit is None:
            raise PermissionDenied(NOT_FOUND)
        return m.Policy.from_store(hit[0]), hit[1]

    def policy_read(self, pid: str) -> dict[str, Any]:
        p, kv = self._policy_kv(pid)
        return self.policy_json(p, kv)

    def policy_read_name(self, name: str) -> dict[str, Any]:
        pid = self._id_by_name(m.POLICY_NAMES, name)
        if pid is None:
            raise PermissionDenied(NOT_FOUND)
        return self.policy_read(pid)

    def policy_update(self, pid: str, body: Any) -> dict[str, Any]:
        d = m.body_map(body, "Policy")
        given = m.text(d, "ID", "Policy")
        if given and given != pid:
            raise InvalidArgument("Policy ID in URL and payload do not match")
        old, kv = self._policy_kv(pid)
        new = self._policy_from(d, pid)
        if pid == m.MANAGEMENT_ID and (new.rules != old.rules or new.datacenters):
            raise InvalidArgument("Changing the Rules for the builtin global-management policy")
        ops: list[Op] = [Put(kv.key, dumps(new.to_store()))]
        compares = []
        if new.name != old.name:
            new_key = m.POLICY_NAMES + m.seg(new.name)
            compares.append(Compare.absent(new_key))
            ops += [Delete(m.POLICY_NAMES + m.seg(old.name)), Put(new_key, pid.encode())]
        self._cas(kv, ops, compares)
        return self.policy_read(pid)

    def policy_delete(self, pid: str) -> None:
        if pid == m.MANAGEMENT_ID:
            raise InvalidArgument(
                "Delete operation not permitted on the builtin global-management policy"
            )
        try:
            old, kv = self._policy_kv(pid)
        except PermissionDenied:
            return
        self._cas(kv, [Delete(kv.key), Delete(m.POLICY_NAMES + m.seg(old.name))])

    def policies(self) -> list[dict[str, Any]]:
        return [
            self.policy_json(m.Policy.from_store(loads(kv.value)), kv, stub=True)
            for kv in self.store.range(m.POLICIES).kvs
        ]

    # -- roles ----------------------------------------------------------------

    def _role_from(self, d: dict[str, Any], rid: str) -> m.Role:
        name = m.text(d, "Name", "Role")
        m.check_role_name(name)
        return m.Role(
            rid,
            name,
            m.text(d, "Description", "Role"),
            policies=self._policy_ids(d, "Role"),
            service_identities=m.identities(d, "ServiceIdentities", "ServiceName", "Role"),
            node_identities=m.identities(d, "NodeIdentities", "NodeName", "Role"),
        )

    def role_create(self, body: Any) -> dict[str, Any]:
        d = m.body_map(body, "Role")
        if m.text(d, "ID", "Role"):
            raise InvalidArgument("Cannot specify the ID when creating a new role")
        r = self._role_from(d, str(uuid.uuid4()))
        name_key = m.ROLE_NAMES + m.seg(r.name)
        done = self.store.txn(
            [Compare.absent(name_key)],
            [Put(m.ROLES + r.id, dumps(r.to_store())), Put(name_key, r.id.encode())],
        )
        if not done.succeeded:
            raise InvalidArgument(f"Invalid Role: A Role with Name {r.name!r} already exists")
        self._changed()
        return self.role_read(r.id)

    def _role_kv(self, rid: str) -> tuple[m.Role, KeyValue]:
        hit = self._get(m.ROLES + m.seg(rid))
        if hit is None:
            raise PermissionDenied(NOT_FOUND)
        return m.Role.from_store(hit[0]), hit[1]

    def role_read(self, rid: str) -> dict[str, Any]:
        r, kv = self._role_kv(rid)
        return self.role_json(r, kv)

    def role_read_name(self, name: str) -> dict[str, Any]:
        rid = self._id_by_name(m.ROLE_NAMES, name)
        if rid is None:
            raise PermissionDenied(NOT_FOUND)
        return self.role_read(rid)

    def role_update(self, rid: str, body: Any) -> dict[str, Any]:
        d = m.body_map(body, "Role")
        given = m.text(d, "ID", "Role")
        if given and given != rid:
            raise InvalidArgument("Role ID in URL and payload do not match")
        old, kv = self._role_kv(rid)
        new = self._role_from(d, rid)
        ops: list[Op] = [Put(kv.key, dumps(new.to_store()))]
        compares = []
        if new.name != old.name:
            new_key = m.ROLE_NAMES + m.seg(new.name)
            compares.append(Compare.absent(new_key))
            ops += [Delete(m.ROLE_NAMES + m.seg(old.name)), Put(new_key, rid.encode())]
        self._cas(kv, ops, compares)
        return self.role_read(rid)

    def role_delete(self, rid: str) -> None:
        try:
            old, kv = self._role_kv(rid)
        except PermissionDenied:
            return
        self._cas(kv, [Delete(kv.key), Delete(m.ROLE_NAMES + m.seg(old.name))])

    def roles(self, policy: str = "") -> list[dict[str, Any]]:
        out = []
        for kv in self.store.range(m.ROLES).kvs:
            r = m.Role.from_store(loads(kv.value))
            if not policy or policy in r.policies:
                out.append(self.role_json(r, kv))
        return out


def _service_ids(ids: tuple[m.Identity, ...]) -> list[dict[str, Any]] | None:
    return [{"ServiceName": i.name, "Datacenters": list(i.datacenters)} for i in ids] or None


def _node_ids(ids: tuple[m.Identity, ...]) -> list[dict[str, Any]] | None:
    return [
        {"NodeName": i.name, "Datacenter": i.datacenters[0] if i.datacenters else ""} for i in ids
    ] or None
