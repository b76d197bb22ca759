"""Consul's KV store over the cove store: gets, puts with CAS and locks,
deletes, and transactions of KV operations that apply all or nothing.

Single operations run through the same engine as /v1/txn: the operations are
applied to an overlay of the keys they touch, the result is committed in one
optimistic store transaction, and indexes of written entries are the commit
revision.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from cove.clock import Clock
from cove.codec import dumps
from cove.errors import Conflict, InvalidArgument, NotFound
from cove.registry import types as t
from cove.registry.queries import Answer, Decoded
from cove.registry.txn import Tx, transact
from cove.registry.txn_catalog import CatalogOp, CatalogTxn
from cove.registry.txn_catalog import Result as CatalogResult
from cove.store.base import Delete, KeyValue, Put, Store

log = logging.getLogger(__name__)

MAX_VALUE = 512 * 1024
MAX_TXN_OPS = 64

VERBS = frozenset(
    {
        "set",
        "cas",
        "lock",
        "unlock",
        "get",
        "get-tree",
        "check-index",
        "check-session",
        "check-not-exists",
        "delete",
        "delete-tree",
        "delete-cas",
    }
)


@dataclass(frozen=True, slots=True)
class KVOp:
    verb: str
    key: str
    value: bytes | None = None
    flags: int = 0
    index: int = 0
    session: str = ""


class TxnAborted(Conflict):
    """Raised when an operation of a KV transaction fails; ``errors`` holds
    (operation index, reason) pairs and nothing was written."""

    def __init__(self, errors: list[tuple[int, str]]) -> None:
        super().__init__("transaction rolled back: " + "; ".join(w for _, w in errors))
        self.errors = errors


class TooLarge(InvalidArgument):
    """Raised when a KV value or a transaction exceeds Consul's limits
    (HTTP 413 at the Consul edge)."""


@dataclass(slots=True)
class _Slot:
    entry: t.KVEntry | None
    create: int
    mod: int
    dirty: bool = False


class _Overlay:
    """The keys a batch of operations touches, as the batch changes them."""

    def __init__(self, tx: Tx, decode: Decoded) -> None:
        self._tx = tx
        self._decode = decode
        self.slots: dict[str, _Slot] = {}

    def get(self, key: str) -> _Slot:
        if key not in self.slots:
            kv = self._tx.get(t.kv_key(key))
            self.slots[key] = _slot(kv, self._decode)
        return self.slots[key]

    def tree(self, prefix: str) -> list[tuple[str, _Slot]]:
        for kv in self._tx.range(t.kv_key(prefix)):
            key = kv.key[len(t.KV) :]
            if key not in self.slots:
                self.slots[key] = _slot(kv, self._decode)
        return sorted(
            (k, s) for k, s in self.slots.items() if k.startswith(prefix) and s.entry is not None
        )

    def write(self, key: str, entry: t.KVEntry | None) -> None:
        slot = self.get(key)
        slot.entry = entry
        slot.dirty = True


def _slot(kv: KeyValue | None, decode: Decoded) -> _Slot:
    if kv is None:
        return _Slot(None, 0, 0)
    return _Slot(t.KVEntry.from_json(decode(kv)), kv.create_revision, kv.mod_revision)


class KV:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._decode = Decoded()
        # Consul keeps lock delays in memory on the leader too.
        self._lock_delays: dict[str, float] = {}

    # -- reads -----------------------------------------------------------------

    def get(self, key: str) -> Answer:
        # The revision is read first: the answer then claims no newer state
        # than it holds, and a write racing the read makes the blocking
        # loop read again instead of returning a stale index.
        rev = self._store.revision
        kv = self._store.get(t.kv_key(key))
        prefixes = (t.kv_key(key),)
        if kv is None:
            return Answer(None, 0, rev, prefixes, found=False)
        return Answer([self._json(kv)], kv.mod_revision, rev, prefixes)

    def get_tree(self, prefix: str) -> Answer:
        rr = self._store.range(t.kv_key(prefix))
        data = [self._json(kv) for kv in rr.kvs]
        index = max((kv.mod_revision for kv in rr.kvs), default=0)
        return Answer(data, index, rr.revision, (t.kv_key(prefix),), found=bool(data))

    def keys(self, prefix: str, separator: str = "") -> Answer:
        rr = self._store.range(t.kv_key(prefix))
        out: list[str] = []
        for kv in rr.kvs:
            key = kv.key[len(t.KV) :]
            if separator:
                cut = key.find(separator, len(prefix))
                if cut >= 0:
                    key = key[: cut + len(separator)]
            if not out or out[-1] != key:
                out.append(key)
        index = max((kv.mod_revision for kv in rr.kvs), default=0)
        return Answer(out, index, rr.revision, (t.kv_key(prefix),), found=bool(out))

    def _json(self, kv: KeyValue) -> dict[str, Any]:
        return {
            **self._decode(kv),
            "CreateIndex": kv.create_revision,
            "ModifyIndex": kv.mod_revision,
        }

    # -- single writes -----------------------------------------------------------

    def put(
        self,
        key: str,
        value: bytes,
        *,
        flags: int = 0,
        cas: int | None = None,
        acquire: str = "",
        release: str = "",
    ) -> bool:
        """Write a key; False when the CAS index or the lock did not hold.
        ``NotFound`` for an unknown session, ``TooLarge`` past 512 KiB."""
        if acquire:
            op = KVOp("lock", key, value, flags, session=acquire)
        elif release:
            # Consul's unlock never checks that the session still exists
            # (agent/consul/state/kvs.go, kvsUnlockTxn): a vanished one
            # holds nothing, so the answer is a plain false.
            try:
                return self._single(KVOp("unlock", key, value, flags, session=release))
            except NotFound:
                return False
        elif cas is not None:
            op = KVOp("cas", key, value, flags, index=cas)
        else:
            op = KVOp("set", key, value, flags)
        return self._single(op)

    def delete(self, key: str, *, recurse: bool = False, cas: int | None = None) -> bool:
        if recurse:
            return self._single(KVOp("delete-tree", key))
        if cas is not None:
            return self._single(KVOp("delete-cas", key, index=cas))
        return self._single(KVOp("delete", key))

    def _single(self, op: KVOp) -> bool:
        try:
            self.txn([op])
        except TxnAborted as exc:
            reason = exc.errors[0][1]
            if "invalid session" in reason:
                raise NotFound(reason) from exc
            return False
        return True

    # -- transactions ----------------------------------------------------------

    def txn(self, ops: Sequence[KVOp | CatalogOp], datacenter: str = "dc1") -> list[dict[str, Any]]:
        """Apply ``ops`` all or nothing; the result of each (``{"KV": ...}``,
        ``{"Node": ...}``, ...). Raises ``TxnAborted`` listing what failed
        (nothing is written then)."""
        if len(ops) > MAX_TXN_OPS:
            raise TooLarge(f"Transaction contains too many operations ({len(ops)} > {MAX_TXN_OPS})")
        for i, op in enumerate(ops):
            if isinstance(op, CatalogOp):
                continue
            if op.verb not in VERBS:
                raise InvalidArgument(f'unknown KV verb "{op.verb}" in operation {i}')
            if op.value is not None and len(op.value) > MAX_VALUE:
                raise TooLarge(
                    f"Value for key {op.key!r} is too large ({len(op.value)} > {MAX_VALUE} bytes)"
                )
        now = self._clock.time()

        def plan(tx: Tx) -> tuple[list[Any], dict[str, _Slot], list[str]]:
            overlay = _Overlay(tx, self._decode)
            catalog = CatalogTxn(tx, datacenter)
            # (key, kind, with value) for KV, a txn_catalog.Result otherwise
            results: list[Any] = []
            errors: list[tuple[int, str]] = []
            locked: list[str] = []
            for i, op in enumerate(ops):
                if isinstance(op, CatalogOp):
                    err = catalog.apply(op, results)
                else:
                    err = self._apply(tx, overlay, op, now, results, locked)
                if err:
                    errors.append((i, err))
            if errors:
                raise TxnAborted(errors)
            catalog.flush()
            for key, slot in overlay.slots.items():
                if not slot.dirty:
                    continue
                if slot.entry is None:
                    if slot.mod:
                        tx.add(Delete(t.kv_key(key)))
                else:
                    tx.add(Put(t.kv_key(key), dumps(slot.entry.to_json())))
            return results, overlay.slots, locked

        (results, slots, _), revision = transact(self._store, plan)
        out: list[dict[str, Any]] = []
        for result in results:
            if isinstance(result, CatalogResult):
                out.append(result.render(revision))
                continue
            key, _kind, with_value = result
            slot = slots[key]
            if slot.entry is None:
                continue
            create, mod = slot.create, slot.mod
            if slot.dirty:
                create, mod = (create or revision), revision
            body = slot.entry.to_json()
            if not with_value:
                body["Value"] = None
            out.append({**body, "CreateIndex": create, "ModifyIndex": mod})
        return out

    def _apply(
        self,
        tx: Tx,
        ov: _Overlay,
        op: KVOp,
        now: float,
        results: list[tuple[str, str, bool]],
        locked: list[str],
    ) -> str:
        """Apply one op to the overlay; an error message when it fails."""
        key = op.key
        if op.verb in ("get-tree", "delete-tree"):
            tree = ov.tree(key)
            if op.verb == "get-tree":
                results.extend((k, "get", True) for k, _ in tree)
            else:
                for k, _ in tree:
                    ov.write(k, None)
            return ""
        if not key:
            return "key must not be empty"
        slot = ov.get(key)
        cur = slot.entry
        if op.verb == "get":
            if cur is None:
                return f'key "{key}" doesn\'t exist'
            results.append((key, "get", True))
            return ""
        if op.verb == "check-index":
            if slot.mod != op.index or cur is None:
                return f"current modify index {slot.mod} != {op.index}"
            results.append((key, "get", False))
            return ""
        if op.verb == "check-session":
            if cur is None or cur.session != op.session:
                return f'failed session check for key "{key}", current session ' + (
                    f'"{cur.session}"' if cur and cur.session else "none"
                )
            results.append((key, "get", False))
            return ""
        if op.verb == "check-not-exists":
            return f'key "{key}" exists' if cur is not None else ""
        if op.verb in ("delete", "delete-cas"):
            if op.verb == "delete-cas" and slot.mod != op.index:
                return f'failed to delete key "{key}", index is stale'
            ov.write(key, None)
            return ""
        value = op.value or None
        if op.verb == "cas" and slot.mod != op.index:
            return f'failed to set key "{key}", index is stale'
        if op.verb in ("set", "cas"):
            session = cur.session if cur else ""
            lock_index = cur.lock_index if cur else 0
            ov.write(key, t.KVEntry(key, value, op.flags, session, lock_index))
            results.append((key, "set", False))
            return ""
        if not op.session:
            return f'failed to {"lock" if op.verb == "lock" else "unlock"} key "{key}": no session'
        if tx.get(t.session_key(op.session)) is None:
            return f'invalid session "{op.session}"'
        if op.verb == "lock":
            if cur is not None and cur.session and cur.session != op.session:
                return f'failed to set key "{key}", lock already held'
            if cur is not None and cur.session == op.session:
                ov.write(key, replace(cur, value=value, flags=op.flags))
            else:
                if self._lock_delays.get(key, 0.0) > now:
                    return f'failed to set key "{key}", lock delay in effect'
                lock_index = (cur.lock_index if cur else 0) + 1
                ov.write(key, t.KVEntry(key, value, op.flags, op.session, lock_index))
            locked.append(key)
            results.append((key, "set", False))
            return ""
        # unlock
        if cur is None or cur.session != op.session:
            return f'failed to set key "{key}", lock wasn\'t held'
        ov.write(key, replace(cur, value=value, flags=op.flags, session=""))
        results.append((key, "set", False))
        return ""

    # -- session invalidation ----------------------------------------------------

    def release_session(self, tx: Tx, session: t.Session, now: float) -> None:
        """Plan, inside ``tx``, what invalidating ``session`` does to the keys
        it holds: release them (with the lock delay) or delete them."""
        for kv in tx.range(t.KV):
            entry = t.KVEntry.from_json(self._decode(kv))
            if entry.session != session.id:
                continue
            if session.behavior is t.Behavior.DELETE:
                tx.add(Delete(kv.key))
            else:
                tx.add(Put(kv.key, dumps(replace(entry, session="").to_json())))
            if session.lock_delay > 0:
                self._lock_delays[entry.key] = now + session.lock_delay
        self._forget_old_delays(now)

    def _forget_old_delays(self, now: float) -> None:
        if len(self._lock_delays) > 1024:
            for key in [k for k, until in self._lock_delays.items() if until <= now]:
                del self._lock_delays[key]
