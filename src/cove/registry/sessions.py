"""Consul sessions: locks on KV keys that end when the session does.

A session is invalidated when it is destroyed, when its TTL runs out without
a renewal (Consul allows twice the TTL), or when one of its checks goes
critical; then the keys it holds are released (with the lock delay) or
deleted, in the same store transaction that deletes the session.
"""

from __future__ import annotations

import heapq
import logging
import threading
import uuid
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import unquote

from cove.clock import Clock
from cove.codec import dumps, loads
from cove.errors import Conflict, InvalidArgument, NotFound
from cove.registry import keys
from cove.registry import types as t
from cove.registry.decode import fold, strings, text
from cove.registry.kv import KV
from cove.registry.queries import Answer, Decoded
from cove.registry.txn import Tx, transact
from cove.store.base import Delete, Event, EventType, KeyValue, Put, Store

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
            if self._ended(session, now) and self.invalidate(session.id):
                ended += 1
        return ended

    def reap_one(self, session_id: str, now: float) -> bool:
        """``reap`` for one session (``SessionReaper``): read it, end it if
        its TTL ran out or a check of it is critical or gone."""
        kv = self._store.get(t.session_key(session_id))
        if kv is None:
            return False
        session = t.Session.from_json(self._decode(kv))
        return self._ended(session, now) and self.invalidate(session.id)

    def _ended(self, session: t.Session, now: float) -> bool:
        expired = bool(session.deadline) and session.deadline <= now
        return expired or not self._healthy(session)

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


OTHER_NODE_GRACE = 5.0  # seconds another node's agent has to reap its own session first


class SessionReaper:
    """``Sessions.reap`` without polling: the sessions of the cluster are
    followed through the agent's watch hub (``apply``) and kept in memory
    with their deadlines in a heap, so the twice-a-second sweep (``reap``)
    touches the store only when a session is due: its TTL ran out, or a
    check it depends on went critical or vanished. The cache is only a hint:
    a due session is read again (``Sessions.invalidate`` reads it in its
    transaction) before it is ended.

    The agent of a session's node ends it on time; the others only after
    ``grace`` (a node without an agent, or one that died), so one expiry
    does not make every agent of the cluster write."""

    def __init__(
        self, sessions: Sessions, clock: Clock, node: str, *, grace: float = OTHER_NODE_GRACE
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._node = node
        self._grace = grace
        self._lock = threading.Lock()
        self._known: dict[str, t.Session] = {}  # by session id
        self._heap: list[tuple[float, str]] = []  # (when due, session id), stale entries skipped
        self._suspects: set[str] = set()  # session ids to look at now

    def load(self, kvs: Iterable[KeyValue]) -> None:
        """Start from a read of ``SESSIONS`` (subscribe to the hub first)."""
        self.apply([Event(EventType.PUT, kv) for kv in kvs])

    def apply(self, events: Sequence[Event]) -> None:
        """Hub callback for ``SESSIONS``, ``CHECKS``, ``NODE_CHECKS`` and
        ``AGENT`` events."""
        with self._lock:
            for ev in events:
                key = ev.kv.key
                if key.startswith(keys.SESSIONS):
                    self._session_event(ev)
                elif ev.type is EventType.DELETE or _critical(ev.kv.value):
                    self._check_event(key)

    def _session_event(self, ev: Event) -> None:
        sid = unquote(ev.kv.key[len(keys.SESSIONS) :])
        if ev.type is EventType.DELETE:
            self._known.pop(sid, None)
            self._suspects.discard(sid)
            return
        try:
            session = t.Session.from_json(loads(ev.kv.value))
        except (ValueError, KeyError, TypeError):
            self._suspects.add(sid)  # let ``reap`` decide on what the store holds
            return
        self._known[sid] = session
        if session.deadline:
            heapq.heappush(self._heap, (self._due(session), sid))

    def _due(self, session: t.Session) -> float:
        return session.deadline + (0.0 if session.node == self._node else self._grace)

    def _check_event(self, key: str) -> None:
        """A check went critical or vanished: its node's sessions that name
        it are suspects. Keys: ``chk/<svc>/<node>/<id>``,
        ``nodechk/<node>/<id>``, ``agent/<node>/chk/<id>``."""
        parts = key.split("/")
        if key.startswith(keys.NODE_CHECKS) and len(parts) == 4:
            node, cid = parts[2], parts[3]
        elif key.startswith(keys.CHECKS) and len(parts) == 5:
            node, cid = parts[3], parts[4]
        elif key.startswith(keys.AGENT) and len(parts) == 5 and parts[3] == "chk":
            node, cid = parts[2], parts[4]
        else:
            return
        node, cid = unquote(node), unquote(cid)
        for sid, s in self._known.items():
            if s.node == node and (
                cid in s.node_checks or any(c == cid for c, _ in s.service_checks)
            ):
                self._suspects.add(sid)

    def pending(self, now: float) -> bool:
        """Whether ``reap`` has anything to do (no store access)."""
        with self._lock:
            heap = self._heap
            while heap and heap[0][0] <= now and not self._is_due(heap[0][1], now):
                heapq.heappop(heap)  # renewed or gone since it was pushed
            return bool(self._suspects) or bool(heap and heap[0][0] <= now)

    def _is_due(self, sid: str, now: float) -> bool:
        s = self._known.get(sid)
        return s is not None and bool(s.deadline) and self._due(s) <= now

    def reap(self) -> int:
        """End the due sessions (read again from the store first); returns
        how many ended."""
        now = self._clock.time()
        with self._lock:
            due = set(self._suspects)
            self._suspects.clear()
            while self._heap and self._heap[0][0] <= now:
                _, sid = heapq.heappop(self._heap)
                if self._is_due(sid, now):
                    due.add(sid)
        ended = 0
        for sid in sorted(due):
            if self._sessions.reap_one(sid, now):
                ended += 1
        return ended


def _critical(value: bytes) -> bool:
    try:
        return bool(loads(value).get("Status") == t.Status.CRITICAL)
    except (ValueError, AttributeError):
        return False
