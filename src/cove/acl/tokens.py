"""Tokens in the store: the built-ins, bootstrap, create, read, update,
clone, delete and list."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from cove.acl import model as m
from cove.acl.reads import NOT_FOUND, AclReads, format_time
from cove.codec import dumps, loads
from cove.errors import InvalidArgument, PermissionDenied
from cove.registry.types import parse_duration
from cove.store.base import Compare, Delete, Op, Put

_MIN_TTL = 60.0
_MAX_TTL = 24 * 3600.0


class TokenWrites(AclReads):
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
            create_time=format_time(self.clock.time()),
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
            create_time=format_time(self.clock.time()),
        )

    def _token_puts(self, t: m.Token) -> list[Op]:
        return [
            Put(m.TOKENS + m.seg(t.accessor_id), dumps(t.to_store())),
            Put(m.SECRETS + t.secret_hash, t.accessor_id.encode()),
        ]

    # -- tokens -------------------------------------------------------------

    def _expiration(self, d: dict[str, Any]) -> float | None:
        ttl = parse_duration(d.get("ExpirationTTL"), "ExpirationTTL")
        when = m.text(d, "ExpirationTime", "Token")
        if ttl and when:
            raise InvalidArgument("Token Expiration TTL and Expiration Time cannot both be set")
        now = self.clock.time()
        if when:
            try:
                ttl = datetime.fromisoformat(when).timestamp() - now
            except ValueError as exc:
                raise InvalidArgument(f"Token ExpirationTime {when!r} is not RFC 3339") from exc
            if ttl <= 0:
                raise InvalidArgument("ExpirationTime cannot be in the past")
        if not ttl:
            return None
        # Consul's default bounds (acl.token_min/max_expiration_ttl).
        if ttl < _MIN_TTL:
            raise InvalidArgument("Token expiration must be at least 1 minute away")
        if ttl > _MAX_TTL:
            raise InvalidArgument("Token expiration must be at most 24 hours away")
        return now + ttl

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
            templated=m.templates(d, "Token"),
            local=bool(d.get("Local", False)),
            create_time=format_time(self.clock.time()),
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
        same = old.expiration_time is not None and when == format_time(old.expiration_time)
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
            templated=m.templates(d, "Token"),
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
            templated=old.templated,
            local=old.local,
            create_time=format_time(self.clock.time()),
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
