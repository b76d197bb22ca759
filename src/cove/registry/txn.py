"""Optimistic read-modify-write over the store.

A writer reads what it needs through a ``Tx`` (every read key is remembered
with its mod revision), plans its writes, and commits them in one store
transaction that also compares every read key: if any changed meanwhile the
plan runs again on fresh data. So concurrent writers never lose updates and
a failing plan (it raises) writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from cove.codec import loads
from cove.errors import Conflict
from cove.store.base import Compare, Delete, Get, KeyValue, Op, Store, local_store

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ATTEMPTS = 100


class Tx:
    """The reads of one attempt, and the writes it plans."""

    def __init__(
        self,
        store: Store,
        prefetch: Sequence[str] = (),
        lookup: Callable[[str], KeyValue | None] | None = None,
    ) -> None:
        self._store = store
        self._lookup = lookup or store.get  # one key's current state
        self.reads: dict[str, int] = {}
        self._writes: dict[str, Op] = {}  # per key, the last write wins
        self._prefix_deletes: list[Op] = []
        self._cache: dict[str, KeyValue | None] = {}
        if prefetch:
            # One store call for every key the plan will surely read: one
            # lock (or one etcd round trip) instead of one per key.
            keys = list(dict.fromkeys(prefetch))
            res = store.txn((), [Get(k) for k in keys])
            for key, found in zip(keys, res.responses, strict=True):
                self._cache[key] = found[0] if found else None

    def get(self, key: str) -> KeyValue | None:
        kv = self._cache[key] if key in self._cache else self._lookup(key)
        self.reads.setdefault(key, kv.mod_revision if kv else 0)
        return kv

    def get_json(self, key: str) -> dict[str, Any] | None:
        kv = self.get(key)
        return loads(kv.value) if kv else None

    def range(self, prefix: str) -> tuple[KeyValue, ...]:
        """Keys under a prefix; each is compared at commit (a key added
        meanwhile is not: callers that care read it by name too)."""
        kvs = self._store.range(prefix).kvs
        for kv in kvs:
            self.reads.setdefault(kv.key, kv.mod_revision)
        return kvs

    def add(self, op: Op) -> None:
        """Plan a write; a later write of the same key replaces an earlier
        one (a plan may delete a key and then write it anew)."""
        if isinstance(op, Delete) and op.prefix:
            self._prefix_deletes.append(op)
        else:
            self._writes.pop(op.key, None)
            self._writes[op.key] = op

    @property
    def ops(self) -> list[Op]:
        return [*self._prefix_deletes, *self._writes.values()]

    def compares(self) -> list[Compare]:
        return [
            Compare.mod_is(k, rev) if rev else Compare.absent(k) for k, rev in self.reads.items()
        ]


def transact(store: Store, plan: Callable[[Tx], T], prefetch: Sequence[str] = ()) -> tuple[T, int]:
    """Run ``plan`` until its writes commit; returns its result and the
    revision of the commit (the current revision when it wrote nothing).
    Raises what ``plan`` raises, or ``Conflict`` when contention never ends.

    On an in-process store the plan runs and commits under the store lock
    instead: nothing can change what it read, so it runs once and its
    commit carries no compares (building and checking them cost more than
    the rest of a registration's store work)."""
    local = local_store(store)
    if local is not None:
        with local.exclusive() as lookup:
            tx = Tx(local, prefetch, lookup)
            result = plan(tx)
            ops = tx.ops
            if not ops:
                return result, local.revision
            return result, local.txn((), ops).revision
    for attempt in range(MAX_ATTEMPTS):
        tx = Tx(store, prefetch)
        result = plan(tx)
        if not tx.ops:
            return result, store.revision
        done = store.txn(tx.compares(), tx.ops)
        if done.succeeded:
            return result, done.revision
        log.debug("registry write lost a race (attempt %s); retrying", attempt + 1)
    raise Conflict("the registry is too busy: a write kept losing races; try again")


def in_process(store: Store) -> bool:
    """Whether ``store`` answers from this process's memory (it offers the
    ``LocalStore`` abilities: memory, and SQLite, which mirrors its file in
    memory), not over a network: then a call costs microseconds, and
    batching reads or hopping to a thread costs more than it saves."""
    return local_store(store) is not None
