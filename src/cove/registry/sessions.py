"""Consul sessions: locks on KV keys that end when the session does.

A session is invalidated when it is destroyed, when its TTL runs out without
a renewal (Consul allows twice the TTL), or when one of its checks goes
critical; then the keys it holds are released (with the lock delay) or
deleted, in the same store transaction that deletes the session.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from cove.clock import Clock
from cove.codec import dumps
from cove.errors import Conflict, InvalidArgument, NotFound
from cove.registry import types as t
from cove.registry.decode import fold, strings, text
from cove.registry.kv import KV
from cove.registry.queries import Answer, Decoded
from cove.registry.txn import Tx, transact
from cove.store.base import Delete, Put, Store

log = logging.getLogger(__name__)

MIN_TTL = 10.0
MAX_TTL = 86_400.0
MAX_LOCK_DELAY = 60.0
TTL_MULTIPLIER = 2.0  # Consul invalidates after twice the TTL


class Sessions:
    def __init__(self, store: Store, clock: Clock, kv: KV, node: str) -> None:
        self._store = store
        self._clock = clock
        self._kv = kv
        self._node = node
        self._decode = Decoded()

    def create(self, body: Any) -> str:
        """A new session's ID. ``InvalidArgument`` for a bad body, ``Conflict``
        when its node or a check it names is missing or critical."""
        d = fold(body or {}, "session")
        node = text(d, "node", "Node") or self._node
        behavior_text = text(d, "behavior", "Behavior") or "release"
        try:
            behavior = t.Behavior(behavior_text)
        except ValueError as exc:
            raise InvalidArgument(f"Invalid Behavior setting '{behavior_text}'") from exc
        ttl = t.parse_duration(d.get("ttl"), "TTL")
        if ttl and not MIN_TTL <= ttl <= MAX_TTL:
            raise InvalidArgument(
                f"Invalid Session TTL '{int(ttl * 1e9)}', must be between [10s=24h0m0s]"
            )
        delay_raw = d.get("lockdelay")
        lock_delay = 15.0
        if delay_raw is not None:
            # Consul takes a bare number as seconds here, unlike other durations.
            if isinstance(delay_raw, int | float) and not isinstance(delay_raw, bool):
                lock_delay = float(delay_raw) if delay_raw < 1000 else delay_raw / 1e9
            else:
                lock_delay = t.parse_duration(delay_raw, "LockDelay")
        if not 0 <= lock_delay <= MAX_LOCK_DELAY:
            raise InvalidArgument(f"Invalid LockDelay: must be between 0 and {MAX_LOCK_DELAY:g}s")
        if "checks" in d and "nodechecks" not in d:
            node_checks = strings(d, "checks", "Checks")
        elif "nodechecks" in d:
            node_checks = strings(d, "nodechecks", "NodeChecks")
        else:
            node_checks = (t.SERF_CHECK,)
        service_checks: list[tuple[str, str]] = []
        for raw in d.get("servicechecks") or ():
            sc = fold(raw, "ServiceChecks")
            service_checks.append((text(sc, "id", "ID"), text(sc, "namespace", "Namespace")))
        now = self._clock.time()
        session = t.Session(
            id=str(uuid.uuid4()),
            node=node,
            name=text(d, "name", "Name"),
            lock_delay=lock_delay,
            behavior=behavior,
            ttl=ttl,
            node_checks=node_checks,
            service_checks=tuple(service_checks),
            deadline=now + ttl * TTL_MULTIPLIER if ttl else 0.0,
        )

        def plan(tx: Tx) -> None:
            if tx.get(t.node_key(node)) is None:
                raise Conflict("Missing node registration", node=node)
            for cid in node_checks:
                self._check_alive(tx, t.check_key("", node, cid), cid)
            for cid, _ in session.service_checks:
                self._check_alive(tx, t.agent_check_key(node, cid), cid, service=True)
            tx.add(Put(t.session_key(session.id), dumps(session.to_json())))

        transact(self._store, plan)
        return session.id

    def _check_alive(self, tx: Tx, key: str, cid: str, *, service: bool = False) -> None:
        raw = tx.get_json(key)
        if raw is not None and service:
            d = t.CheckDefinition.from_json(raw)
            raw = tx.get_json(t.check_key(d.service_name, self._node, cid))
        if raw is None:
            raise Conflict(f"Missing check '{cid}' registration")
        if raw.get("Status") == t.Status.CRITICAL:
            raise Conflict(f"Check '{cid}' is in critical state")

    def destroy(self, session_id: str) -> None:
        self.invalidate(session_id)

    def invalidate(self, session_id: str) -> bool:
        """End a session and release or delete its keys; False when there
        was no such session."""
        now = self._clock.time()

        def plan(tx: Tx) -> bool:
            raw = tx.get_json(t.session_key(session_id))
            if raw is None:
                return False
            session = t.Session.from_json(raw)
            tx.add(Delete(t.session_key(session_id)))
            self._kv.release_session(tx, session, now)
            return True

        gone = transact(self._store, plan)[0]
        if gone:
            log.info("session %s invalidated", session_id)
        return gone

    def renew(self, session_id: str) -> Answer:
        now = self._clock.time()

        def plan(tx: Tx) -> None:
            raw = tx.get_json(t.session_key(session_id))
            if raw is None:
                raise NotFound(f"Session id '{session_id}' not found")
            session = t.Session.from_json(raw)
            if session.ttl:
                raw["Deadline"] = now + session.ttl * TTL_MULTIPLIER
                tx.add(Put(t.session_key(session_id), dumps(raw)))

        transact(self._store, plan)
        return self.info(session_id)

    def info(self, session_id: str) -> Answer:
        key = t.session_key(session_id)
        rev = self._store.revision  # first: see KV.get
        kv = self._store.get(key)
        if kv is None:
            return Answer([], 0, rev, (key,))
        return Answer([self._json(kv)], kv.mod_revision, rev, (key,))

    def list(self, node: str | None = None) -> Answer:
        rr = self._store.range(t.SESSIONS)
        kvs = [kv for kv in rr.kvs if node is None or self._decode(kv)["Node"] == node]
        index = max((kv.mod_revision for kv in kvs), default=0)
        return Answer([self._json(kv) for kv in kvs], index, rr.revision, (t.SESSIONS,))

    def _json(self, kv: Any) -> dict[str, Any]:
        d = {k: v for k, v in self._decode(kv).items() if k != "Deadline"}
        return {**d, "CreateIndex": kv.create_revision, "ModifyIndex": kv.mod_revision}

    def reap(self) -> int:
        """Invalidate sessions whose TTL ran out or whose checks went
        critical or vanished; returns how many."""
        now = self._clock.time()
        ended = 0
        for kv in self._store.range(t.SESSIONS).kvs:
            session = t.Session.from_json(self._decode(kv))
            expired = bool(session.deadline) and session.deadline <= now
            if (expired or not self._healthy(session)) and self.invalidate(session.id):
                ended += 1
        return ended

    def _healthy(self, session: t.Session) -> bool:
        for cid in session.node_checks:
            kv = self._store.get(t.check_key("", session.node, cid))
            if kv is None or self._decode(kv).get("Status") == t.Status.CRITICAL:
                return False
        for cid, _ in session.service_checks:
            dkv = self._store.get(t.agent_check_key(session.node, cid))
            if dkv is None:
                return False
            d = self._decode(dkv)
            kv = self._store.get(t.check_key(d["ServiceName"], session.node, cid))
            if kv is None or self._decode(kv).get("Status") == t.Status.CRITICAL:
                return False
        return True
