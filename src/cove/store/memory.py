"""An in-process store: the reference implementation of the Store protocol.

``MemoryStore`` keeps every key, a bounded history of events (for watches
from a past revision) and the leases in Python objects behind one lock. It is
also the engine of ``SqliteStore``, which owns one as the mirror of its file:
given a ``Journal``, the store restores its state from it on opening and
hands it every change before the in-memory state changes (so a failed write
leaves both untouched).

Lease deadlines are wall-clock times from the injected clock (``time()``), so
a persisted lease survives a restart; a small daemon thread, started with the
first lease, calls ``expire_leases()``; unit tests with a ``ManualClock`` call
it themselves.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

from cove.clock import Clock
from cove.errors import InvalidArgument, NotFound, StorageFull, StoreError, WatchCompacted
from cove.store.base import (
    UNBOUNDED,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    Event,
    EventType,
    Get,
    KeyValue,
    Listener,
    Op,
    Put,
    RangeResult,
    TxnResult,
    in_range,
)

log = logging.getLogger(__name__)

DEFAULT_HISTORY = 10_000
"""Revisions of history kept for watches from the past; older starts raise
``WatchCompacted``."""

_Comparable = TypeVar("_Comparable", bytes, int)

_EXPIRY_POLL = 0.25  # seconds between lease expiry checks (real time)


def compare_holds(compare: Compare, kv: KeyValue | None) -> bool:
    """Whether ``compare`` holds for ``kv`` (``None``: the key is missing, so
    its version and revisions are 0 and its value is empty)."""
    if compare.target is CompareTarget.VALUE:
        if not isinstance(compare.value, bytes):
            raise InvalidArgument("a value compare needs bytes", key=compare.key)
        return _holds(compare.op, kv.value if kv else b"", compare.value)
    if not isinstance(compare.value, int):
        raise InvalidArgument("a version or revision compare needs an int", key=compare.key)
    if kv is None:
        return _holds(compare.op, 0, compare.value)
    if compare.target is CompareTarget.VERSION:
        return _holds(compare.op, kv.version, compare.value)
    if compare.target is CompareTarget.CREATE:
        return _holds(compare.op, kv.create_revision, compare.value)
    return _holds(compare.op, kv.mod_revision, compare.value)


def _holds(op: CompareOp, actual: _Comparable, want: _Comparable) -> bool:
    if op is CompareOp.EQUAL:
        return actual == want
    if op is CompareOp.NOT_EQUAL:
        return actual != want
    if op is CompareOp.LESS:
        return actual < want
    return actual > want


def check_ops(ops: Sequence[Op]) -> None:
    """Reject what etcd rejects, so every backend behaves alike: an empty key,
    and a key written twice in one branch."""
    written: set[str] = set()
    prefixes: list[str] = []
    for op in ops:
        if not op.key and not (isinstance(op, Delete | Get) and op.prefix):
            raise InvalidArgument("a store key must not be empty")
        if isinstance(op, Put):
            if op.key in written or (prefixes and any(op.key.startswith(p) for p in prefixes)):
                raise InvalidArgument("a key is written twice in one transaction", key=op.key)
            written.add(op.key)
        elif isinstance(op, Delete):
            if op.prefix:
                if any(k.startswith(op.key) for k in written):
                    raise InvalidArgument("a key is written twice in one transaction", key=op.key)
                prefixes.append(op.key)
            else:
                if op.key in written:
                    raise InvalidArgument("a key is written twice in one transaction", key=op.key)
                written.add(op.key)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A store's whole state as a journal restores it: the keys, the history
    of events kept for watches, the revision, the compaction point and the
    leases (id, TTL, wall-clock deadline)."""

    kvs: Iterable[KeyValue] = ()
    history: Iterable[Event] = ()
    revision: int = 1  # etcd starts at 1, so a Consul index is never 0
    compacted: int = 1
    leases: Iterable[tuple[int, int, float]] = ()


class Journal(Protocol):
    """Where a ``MemoryStore`` makes its changes durable (SQLite). Every
    method is called with the store lock held, before the in-memory state
    changes; a write that cannot be made durable raises ``StoreError`` and
    the change does not happen."""

    def restore(self) -> Snapshot:
        """The durable state. Raises ``StoreError`` when it cannot be read."""
        ...

    def events(self, revision: int, events: Sequence[Event]) -> None:
        """Make one revision durable."""
        ...

    def compact(self, revision: int) -> None:
        """Forget the history before ``revision``."""
        ...

    def lease(self, lease: int, ttl: int, deadline: float) -> None:
        """Store a lease or its new deadline."""
        ...

    def lease_end(self, lease: int) -> None:
        """Forget a lease (its keys' deletion comes through ``events``)."""
        ...

    def group_begin(self) -> None:
        """Hold back the writes until ``group_end``."""
        ...

    def group_end(self) -> None:
        """Write what the group held back as one unit; raises ``StoreError``
        when that fails (then the store re-reads ``restore()``)."""
        ...

    def close(self) -> None:
        """Release the backing resources."""
        ...


class _NoJournal:
    """The memory backend's journal: nothing is durable."""

    def restore(self) -> Snapshot:
        return Snapshot()

    def events(self, revision: int, events: Sequence[Event]) -> None:
        pass

    def compact(self, revision: int) -> None:
        pass

    def lease(self, lease: int, ttl: int, deadline: float) -> None:
        pass

    def lease_end(self, lease: int) -> None:
        pass

    def group_begin(self) -> None:
        pass

    def group_end(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(slots=True)
class _Lease:
    id: int
    ttl: int
    deadline: float
    keys: set[str] = field(default_factory=set)


class MemoryWatch:
    """A cursor over the store's shared event log."""

    def __init__(self, store: MemoryStore, prefix: str, start: int, end: str | None) -> None:
        self._store = store
        self._prefix = prefix
        self._end = end
        self._next = start
        self._closed = False

    def next(self, timeout: float | None = None) -> list[Event]:
        return self._store._read_watch(self, timeout)

    def close(self) -> None:
        with self._store._cond:
            self._closed = True
            self._store._cond.notify_all()


class MemoryStore:
    """The Store protocol in memory; thread-safe behind one lock."""

    def __init__(
        self, clock: Clock, *, history: int = DEFAULT_HISTORY, journal: Journal | None = None
    ) -> None:
        """``journal``: where changes are made durable (``SqliteStore``);
        the store starts from its ``restore()``. Raises ``StoreError`` when
        the journal cannot be read."""
        self._clock = clock
        self._journal: Journal = journal if journal is not None else _NoJournal()
        self._history = max(1, history)
        # Reentrant, so reads and writes work inside ``batch()``.
        self._cond = threading.Condition(threading.RLock())
        self._batching = False
        self._listeners: list[Listener] = []
        self._group_events: list[Event] = []  # a group's events, for the listeners
        self._kvs: dict[str, KeyValue] = {}
        self._keys: list[str] = []  # sorted, for range by prefix
        # Keys created since the last range, not yet in ``_keys``: inserting
        # each into the sorted list moves half of it (tens of microseconds
        # with 10^5 keys), while one sort at the next range merges a whole
        # burst of registrations in a single pass.
        self._fresh: set[str] = set()
        self._log: list[Event] = []  # events of revisions >= self._compacted
        self._revision = 1  # etcd starts at 1, so a Consul index is never 0
        self._compacted = 1
        self._leases: dict[int, _Lease] = {}
        self._closed = False
        self._expiry_thread: threading.Thread | None = None
        self._stop = threading.Event()
        if journal is not None:
            self._load(journal.restore())

    # -- reads ---------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        with self._cond:
            self._check_open()
            return self._kvs.get(key)

    def range(self, prefix: str, *, end: str | None = None) -> RangeResult:
        with self._cond:
            self._check_open()
            if end is not None:
                keys = self._sorted_keys()
                lo = bisect.bisect_left(keys, prefix)
                hi = bisect.bisect_left(keys, end, lo) if end != UNBOUNDED else len(keys)
                return RangeResult(tuple(self._kvs[k] for k in keys[lo:hi]), self._revision)
            return RangeResult(tuple(self._scan(prefix, {})), self._revision)

    def keys(self, prefix: str, *, end: str | None = None) -> RangeResult:
        found = self.range(prefix, end=end)
        return RangeResult(tuple(replace(kv, value=b"") for kv in found.kvs), found.revision)

    @property
    def revision(self) -> int:
        with self._cond:
            return self._revision

    # -- writes --------------------------------------------------------------

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        return self.txn((), (Put(key, value, lease),)).revision

    def delete(self, key: str, *, prefix: bool = False) -> int:
        return self.txn((), (Delete(key, prefix),)).revision

    def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        with self._cond:
            self._check_open()
            kvs = self._kvs
            ok = True
            for c in compares:
                if not compare_holds(c, kvs.get(c.key)):
                    ok = False
                    break
            ops = success if ok else failure
            check_ops(ops)
            for op in ops:
                if isinstance(op, Put) and op.lease:
                    self._live_lease(op.lease)
            events, responses = self._plan(ops)
            revision = self._apply(events)
            return TxnResult(ok, revision, tuple(responses))

    def _plan(self, ops: Sequence[Op]) -> tuple[list[Event], list[tuple[KeyValue, ...]]]:
        """The events ``ops`` would cause, and the Get responses (which see the
        branch's earlier writes, as in etcd)."""
        rev = self._revision + 1
        overlay: dict[str, KeyValue | None] = {}
        events: list[Event] = []
        responses: list[tuple[KeyValue, ...]] = []
        for op in ops:
            if isinstance(op, Get):
                if op.prefix:
                    responses.append(tuple(self._scan(op.key, overlay)))
                else:
                    kv = overlay[op.key] if op.key in overlay else self._kvs.get(op.key)
                    responses.append((kv,) if kv else ())
                continue
            responses.append(())
            if isinstance(op, Put):
                prev = self._kvs.get(op.key)
                if prev is None:
                    new = KeyValue(op.key, op.value, rev, rev, 1, op.lease)
                else:
                    new = KeyValue(
                        op.key, op.value, prev.create_revision, rev, prev.version + 1, op.lease
                    )
                overlay[op.key] = new
                events.append(Event(EventType.PUT, new, prev))
            else:
                if op.prefix:
                    victims = self._scan(op.key, overlay)
                else:
                    kv = overlay[op.key] if op.key in overlay else self._kvs.get(op.key)
                    victims = [kv] if kv else []
                for kv in victims:
                    overlay[kv.key] = None
                    events.append(Event(EventType.DELETE, _tombstone(kv.key, rev), kv))
        return events, responses

    def _apply(self, events: list[Event]) -> int:
        """Commit one revision's events (none: no new revision). Lock held."""
        if not events:
            return self._revision
        rev = self._revision + 1
        self._journal.events(rev, events)
        for ev in events:
            key = ev.kv.key
            if ev.prev is not None and ev.prev.lease:
                lease = self._leases.get(ev.prev.lease)
                if lease:
                    lease.keys.discard(key)
            if ev.type is EventType.PUT:
                if key not in self._kvs:
                    self._fresh.add(key)
                self._kvs[key] = ev.kv
                if ev.kv.lease:
                    self._leases[ev.kv.lease].keys.add(key)
            elif self._kvs.pop(key, None) is not None:
                if key in self._fresh:
                    self._fresh.discard(key)
                else:
                    del self._keys[bisect.bisect_left(self._keys, key)]
        self._revision = rev
        self._log.extend(events)
        if rev - self._compacted > self._history + self._history // 10:
            self._compact_locked(rev - self._history)
        if not self._batching:  # a group wakes the watchers once, at its end
            self._cond.notify_all()
            if self._listeners:
                self._emit(events)
        elif self._listeners:
            self._group_events.extend(events)
        return rev

    # -- the LocalStore capability --------------------------------------------

    def local(self) -> MemoryStore:
        """In process: every ``LocalStore`` ability."""
        return self

    def listen(self, listener: Listener) -> int:
        """Call ``listener(events)`` after every commit from now on, in the
        thread that commits, with the store lock held: once per write, or
        once per ``batch()`` with all of its events at its end. ``None``
        instead of events means the state was re-read from the backend (a
        failed group commit). A listener must be quick and must not write.
        Returns the revision it starts after. This is how an in-process
        hub learns of changes without a thread of its own waking per commit."""
        with self._cond:
            self._listeners = [*self._listeners, listener]
            return self._revision

    def unlisten(self, listener: Listener) -> None:
        with self._cond:
            self._listeners = [fn for fn in self._listeners if fn is not listener]

    def _emit(self, events: Sequence[Event] | None) -> None:
        for fn in self._listeners:
            try:
                fn(events)
            except Exception:
                log.exception("a store commit listener failed")

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[Callable[[str], KeyValue | None]]:
        """Hold the store lock for the block: no other thread reads or
        writes until it ends, so what the block reads cannot change before
        the block writes (a read-modify-write needs no compares). Reentrant;
        keep the block short and free of I/O. Yields a ``get`` for the
        block that skips the lock it already holds."""
        with self._cond:
            self._check_open()
            yield self._kvs.get

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group the writes made inside the block into one commit (group
        commit): the block holds the store lock, so other threads see all of
        the group's writes or none, and a persistent backend writes them as
        one transaction when the block ends, even when it raises. Each write
        still gets its own revision. Raises ``StoreError`` at the end of the
        block when that commit fails; then none of the group's writes
        happened. Nested blocks join the outer group."""
        with self._cond:
            self._check_open()
            if self._batching:
                yield
                return
            self._batching = True
            self._group_events = []
            self._journal.group_begin()
            try:
                yield
            finally:
                self._batching = False
                events, self._group_events = self._group_events, []
                try:
                    try:
                        self._journal.group_end()
                    except StoreError:
                        # The state holds the group's writes (no other
                        # thread saw them: the group held the lock): go back
                        # to what the journal kept.
                        log.error("a group commit failed; re-reading the store")
                        self._load(self._journal.restore())
                        raise
                except BaseException:
                    if self._listeners:
                        self._emit(None)
                    raise
                else:
                    if events and self._listeners:
                        self._emit(events)
                finally:
                    self._cond.notify_all()

    def _sorted_keys(self) -> list[str]:
        """Every key, sorted (merging the keys created since the last call)."""
        if self._fresh:
            self._keys.extend(self._fresh)
            self._keys.sort()  # timsort: one sorted run plus a short tail
            self._fresh.clear()
        return self._keys

    def _scan(self, prefix: str, overlay: dict[str, KeyValue | None]) -> list[KeyValue]:
        keys = self._sorted_keys()
        start = bisect.bisect_left(keys, prefix)
        end = _range_end(keys, prefix)
        kvs = self._kvs
        if not overlay or not any(k.startswith(prefix) for k in overlay):
            # The usual read: the keys are in order already.
            return [kvs[k] for k in keys[start:end]]
        found: dict[str, KeyValue] = {k: kvs[k] for k in keys[start:end]}
        for key, kv in overlay.items():
            if key.startswith(prefix):
                if kv is None:
                    found.pop(key, None)
                else:
                    found[key] = kv
        return [found[k] for k in sorted(found)]

    # -- watches and history -----------------------------------------------

    def watch(
        self,
        prefix: str,
        start_revision: int | None = None,
        *,
        prev: bool = True,
        end: str | None = None,
    ) -> MemoryWatch:
        """``prev`` is ignored: in memory the previous value costs nothing."""
        with self._cond:
            self._check_open()
            start = self._revision + 1
            if start_revision is not None and start_revision > 0:
                start = start_revision
            return MemoryWatch(self, prefix, start, end)

    def _read_watch(self, watch: MemoryWatch, timeout: float | None) -> list[Event]:
        deadline = None if timeout is None else self._now_real() + timeout
        with self._cond:
            while True:
                if watch._closed or self._closed:
                    raise StoreError("the watch is closed")
                if watch._next < self._compacted:
                    raise WatchCompacted(
                        "watch start revision was compacted",
                        start=watch._next,
                        compacted=self._compacted,
                    )
                if watch._next <= self._revision:
                    i = bisect.bisect_left(self._log, watch._next, key=_event_revision)
                    watch._next = self._revision + 1
                    # A slice, not islice: islice would step over the i
                    # older events of the history one by one on every read.
                    prefix, end = watch._prefix, watch._end
                    if end is None:
                        found = [e for e in self._log[i:] if e.kv.key.startswith(prefix)]
                    else:
                        found = [e for e in self._log[i:] if in_range(e.kv.key, prefix, end)]
                    if found:
                        return found
                remaining = None if deadline is None else deadline - self._now_real()
                if remaining is not None and remaining <= 0:
                    return []
                self._cond.wait(remaining)

    @staticmethod
    def _now_real() -> float:
        # Watch timeouts are real waits on a condition variable, whatever the
        # injected clock says.
        return time.monotonic()

    def compact(self, revision: int) -> None:
        with self._cond:
            self._check_open()
            if revision > self._revision:
                raise InvalidArgument(
                    "cannot compact a future revision", revision=revision, current=self._revision
                )
            self._compact_locked(revision)

    def _compact_locked(self, revision: int) -> None:
        if revision <= self._compacted:
            return
        self._journal.compact(revision)
        del self._log[: bisect.bisect_left(self._log, revision, key=_event_revision)]
        self._compacted = revision
        self._cond.notify_all()  # lagging watches must learn they are compacted

    # -- leases --------------------------------------------------------------

    def lease_grant(self, ttl: int) -> int:
        if ttl <= 0:
            raise InvalidArgument("a lease TTL must be positive", ttl=ttl)
        with self._cond:
            self._check_open()
            lease_id = secrets.randbits(62) + 1
            while lease_id in self._leases:
                lease_id = secrets.randbits(62) + 1
            lease = _Lease(lease_id, ttl, self._clock.time() + ttl)
            self._journal.lease(lease.id, lease.ttl, lease.deadline)
            self._leases[lease_id] = lease
            self._start_expiry()
            return lease_id

    def lease_keepalive(self, lease: int) -> int:
        with self._cond:
            self._check_open()
            found = self._live_lease(lease)
            deadline = self._clock.time() + found.ttl
            self._journal.lease(found.id, found.ttl, deadline)
            found.deadline = deadline
            return found.ttl

    def lease_revoke(self, lease: int) -> None:
        with self._cond:
            self._check_open()
            if lease in self._leases:
                self._end_lease(self._leases[lease])

    def expire_leases(self) -> int:
        """End every lease whose deadline has passed; returns how many."""
        with self._cond:
            if self._closed:
                return 0
            now = self._clock.time()
            due = [le for le in self._leases.values() if le.deadline <= now]
            for lease in due:
                log.debug("lease %s expired with %s keys", lease.id, len(lease.keys))
                self._end_lease(lease)
            return len(due)

    def _live_lease(self, lease_id: int) -> _Lease:
        lease = self._leases.get(lease_id)
        if lease is not None and lease.deadline <= self._clock.time():
            self._end_lease(lease)
            lease = None
        if lease is None:
            raise NotFound("lease not found or expired", lease=lease_id)
        return lease

    def _end_lease(self, lease: _Lease) -> None:
        """Delete the lease's keys as one revision, then forget the lease."""
        rev = self._revision + 1
        events = [
            Event(EventType.DELETE, _tombstone(key, rev), self._kvs[key])
            for key in sorted(lease.keys)
            if key in self._kvs
        ]
        # Keys first: a crash in between leaves a lease without keys, which
        # simply expires again, never keys without their lease.
        self._apply(events)
        self._journal.lease_end(lease.id)
        self._leases.pop(lease.id, None)

    def _start_expiry(self) -> None:
        if self._expiry_thread is None:
            self._expiry_thread = threading.Thread(
                target=self._expiry_loop, name="cove-store-leases", daemon=True
            )
            self._expiry_thread.start()

    def _expiry_loop(self) -> None:
        full = False
        while not self._stop.wait(_EXPIRY_POLL):
            try:
                self.expire_leases()
            except StorageFull as exc:
                # Expiry is a write too: it waits for space, said once.
                if not full:
                    log.warning("leases cannot expire until space is freed: %s", exc.message)
                full = True
            except StoreError:
                log.exception("lease expiry failed; retrying")
            else:
                full = False

    # -- life cycle ----------------------------------------------------------

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._stop.set()
        if (
            self._expiry_thread is not None
            and self._expiry_thread is not threading.current_thread()
        ):
            self._expiry_thread.join(timeout=5)
        self._journal.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    # -- loading (for backends that restore state) ---------------------------

    def _load(self, snapshot: Snapshot) -> None:
        """Replace the state with what the journal restored."""
        with self._cond:
            self._kvs = {kv.key: kv for kv in snapshot.kvs}
            self._keys = sorted(self._kvs)
            self._fresh = set()
            self._log = sorted(snapshot.history, key=_event_revision)
            self._revision = snapshot.revision
            self._compacted = snapshot.compacted
            self._leases = {i: _Lease(i, ttl, deadline) for i, ttl, deadline in snapshot.leases}
            for kv in self._kvs.values():
                if kv.lease in self._leases:
                    self._leases[kv.lease].keys.add(kv.key)
            if self._leases:
                self._start_expiry()


def _range_end(keys: list[str], prefix: str) -> int:
    """Where the sorted ``keys`` that start with ``prefix`` end."""
    stem = prefix.rstrip("\U0010ffff")  # the highest character has no successor
    if not stem:
        return len(keys)
    return bisect.bisect_left(keys, stem[:-1] + chr(ord(stem[-1]) + 1))


def _tombstone(key: str, revision: int) -> KeyValue:
    return KeyValue(key=key, value=b"", create_revision=0, mod_revision=revision, version=0)


def _event_revision(event: Event) -> int:
    return event.kv.mod_revision
