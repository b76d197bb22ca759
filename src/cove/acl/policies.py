"""Policies and roles in the store: create, read (by ID or name),
update, delete and list."""

from __future__ import annotations

import uuid
from typing import Any

from cove.acl import model as m
from cove.acl.reads import NOT_FOUND, AclReads
from cove.codec import dumps, loads
from cove.errors import InvalidArgument, PermissionDenied
from cove.store.base import Compare, Delete, KeyValue, Op, Put


class PolicyWrites(AclReads):
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
            templated=m.templates(d, "Role"),
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
