"""``StoreProxy``: a ``Store`` that hands every call to another one, for
wrappers that change a few of them (``CachedReads`` reads from the hub's
cache, ``NotingStore`` tells the hub of the agent's writes)."""

from __future__ import annotations

from collections.abc import Sequence

from cove.store.base import (
    Compare,
    KeyValue,
    LocalStore,
    Op,
    RangeResult,
    Store,
    TxnResult,
    Watch,
)


class StoreProxy:
    """Every ``Store`` call, on ``store``."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def get(self, key: str) -> KeyValue | None:
        return self._store.get(key)

    def range(self, prefix: str, *, end: str | None = None) -> RangeResult:
        return self._store.range(prefix, end=end)

    def keys(self, prefix: str, *, end: str | None = None) -> RangeResult:
        return self._store.keys(prefix, end=end)

    @property
    def revision(self) -> int:
        return self._store.revision

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        return self._store.put(key, value, lease=lease)

    def delete(self, key: str, *, prefix: bool = False) -> int:
        return self._store.delete(key, prefix=prefix)

    def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        return self._store.txn(compares, success, failure)

    def watch(
        self,
        prefix: str,
        start_revision: int | None = None,
        *,
        prev: bool = True,
        end: str | None = None,
    ) -> Watch:
        return self._store.watch(prefix, start_revision, prev=prev, end=end)

    def lease_grant(self, ttl: int) -> int:
        return self._store.lease_grant(ttl)

    def lease_keepalive(self, lease: int) -> int:
        return self._store.lease_keepalive(lease)

    def lease_revoke(self, lease: int) -> None:
        self._store.lease_revoke(lease)

    def compact(self, revision: int) -> None:
        self._store.compact(revision)

    def close(self) -> None:
        self._store.close()

    def local(self) -> LocalStore | None:
        return self._store.local()
