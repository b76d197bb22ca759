"""The Store protocol: etcd's data model, which every backend implements.

- String keys, byte values.
- One global revision that grows by one with every write transaction (a
  transaction that writes several keys bumps it once; a read, or a delete of a
  missing key, does not bump it).
- Per key: ``create_revision`` (revision of the write that created it),
  ``mod_revision`` (revision of the last write) and ``version`` (writes since
  creation, 1 after the first put).
- Range by prefix, transactions with compare-and-swap that apply all or
  nothing, watch from a past revision (no event missed, reordered or
  duplicated), and leases with a TTL that delete their keys when they expire
  or are revoked.

Backends: ``memory`` (tests), ``sqlite`` (default, one host) and ``etcd``
(cluster). All are thread-safe and synchronous; async callers use a thread.

What an in-process backend (memory, SQLite) can do beyond the protocol is a
protocol of its own, ``LocalStore``: an exclusive transaction under the
store's lock, commit listeners and group commit. Code that can use it asks
``local_store(store)`` once, at wiring time, and keeps a second path for
stores that answer ``None`` (etcd): no code above the store looks at a
backend's class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


class EventType(StrEnum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Event:
    """One change. For DELETE, ``kv.value`` is empty and ``kv.mod_revision``
    is the revision of the delete. ``prev`` is the key's state before."""

    type: EventType
    kv: KeyValue
    prev: KeyValue | None = None

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


class CompareTarget(StrEnum):
    VALUE = "value"
    VERSION = "version"
    CREATE = "create"
    MOD = "mod"


class CompareOp(StrEnum):
    EQUAL = "="
    NOT_EQUAL = "!="
    LESS = "<"
    GREATER = ">"


@dataclass(frozen=True, slots=True)
class Compare:
    """A condition on one key. A missing key has version, create and mod
    revision 0. On etcd a VALUE compare on a missing key never holds, so
    test existence with ``absent``/``present``, never with a value."""

    key: str
    target: CompareTarget
    op: CompareOp
    value: bytes | int

    @classmethod
    def absent(cls, key: str) -> Compare:
        return cls(key, CompareTarget.VERSION, CompareOp.EQUAL, 0)

    @classmethod
    def present(cls, key: str) -> Compare:
        return cls(key, CompareTarget.VERSION, CompareOp.GREATER, 0)

    @classmethod
    def mod_is(cls, key: str, revision: int) -> Compare:
        return cls(key, CompareTarget.MOD, CompareOp.EQUAL, revision)

    @classmethod
    def value_is(cls, key: str, value: bytes) -> Compare:
        return cls(key, CompareTarget.VALUE, CompareOp.EQUAL, value)


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class Get:
    key: str
    prefix: bool = False


Op = Put | Delete | Get


@dataclass(frozen=True, slots=True)
class TxnResult:
    """``responses`` has one entry per op of the branch that ran: the KeyValues
    read for a Get, and ``[]`` for Put and Delete."""

    succeeded: bool
    revision: int
    responses: tuple[tuple[KeyValue, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: tuple[KeyValue, ...]
    revision: int


# ``end`` of a key range that runs to the end of the keyspace.
UNBOUNDED = ""


def in_range(key: str, start: str, end: str | None) -> bool:
    """Whether ``key`` is under the prefix ``start`` (``end`` None) or in
    the range from ``start`` to ``end`` (excluded; ``UNBOUNDED``: no end)."""
    if end is None:
        return key.startswith(start)
    return key >= start and (end == UNBOUNDED or key < end)


class Watch(Protocol):
    """A stream of events for a prefix, from a start revision on."""

    def next(self, timeout: float | None = None) -> list[Event]:
        """Block until events arrive and return them in revision order
        (``[]`` when ``timeout`` passes first). Raises ``WatchCompacted`` when
        the start revision was already compacted away, and ``StoreError``
        when the watch is closed or the backend fails."""
        ...

    def close(self) -> None: ...


class Store(Protocol):
    def get(self, key: str) -> KeyValue | None: ...

    def range(self, prefix: str, *, end: str | None = None) -> RangeResult:
        """All keys starting with ``prefix``, sorted by key, and the store's
        revision at the time of the read. With ``end``, the keys from
        ``prefix`` (then a first key, not a prefix) up to ``end`` excluded;
        ``end`` empty (``UNBOUNDED``): to the end of the keyspace."""
        ...

    def keys(self, prefix: str, *, end: str | None = None) -> RangeResult:
        """As ``range``, with every value left empty (``b""``): what a
        caller needs that only follows keys and revisions, for a fraction
        of the bytes over a network."""
        ...

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write one key; returns the new revision. Raises ``NotFound`` for an
        unknown or expired lease."""
        ...

    def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete a key (or every key under a prefix); returns the store's
        revision afterwards (unchanged when nothing was deleted)."""
        ...

    def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """If every compare holds, run ``success``, else ``failure``; all or
        nothing, as one revision."""
        ...

    def watch(
        self,
        prefix: str,
        start_revision: int | None = None,
        *,
        prev: bool = True,
        end: str | None = None,
    ) -> Watch:
        """Events for keys under ``prefix`` (with ``end``: in the range, as
        for ``range``) with revision >= ``start_revision`` (default: only
        future events). With ``prev`` false the backend may leave
        ``Event.prev`` None (etcd then sends each value once, not twice)."""
        ...

    def lease_grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; returns its id (> 0)."""
        ...

    def lease_keepalive(self, lease: int) -> int:
        """Renew a lease to its full TTL; returns the TTL. Raises ``NotFound``
        when the lease has expired or never existed."""
        ...

    def lease_revoke(self, lease: int) -> None:
        """End a lease now and delete its keys. Unknown leases are ignored."""
        ...

    @property
    def revision(self) -> int: ...

    def compact(self, revision: int) -> None:
        """Forget history before ``revision``; watches from earlier fail."""
        ...

    def close(self) -> None: ...

    def local(self) -> LocalStore | None:
        """This backend's in-process abilities (``LocalStore``), or ``None``
        when it answers over a network. Ask through ``local_store``."""
        ...


# A commit listener: the events of each commit, or None when the state was
# re-read from the backend (a failed group commit) and must be re-read.
Listener = Callable[[Sequence[Event] | None], None]


class LocalStore(Store, Protocol):
    """A store that answers from this process's memory (memory, SQLite): a
    call costs microseconds, so callers may hold its lock across a
    read-modify-write, learn of commits from a listener instead of a watch
    thread, and group many writes into one commit."""

    def exclusive(self) -> AbstractContextManager[Callable[[str], KeyValue | None]]:
        """Hold the store lock for the block: no other thread reads or
        writes until it ends, so what the block reads cannot change before
        the block writes (a read-modify-write needs no compares). Reentrant;
        keep the block short and free of I/O. Yields a ``get`` for the block
        that skips the lock it already holds. Raises ``StoreError`` when the
        store is closed."""
        ...

    def batch(self) -> AbstractContextManager[None]:
        """Group the writes made inside the block into one commit (group
        commit): other threads see all of the group's writes or none, and a
        persistent backend writes them as one transaction when the block
        ends. Each write still gets its own revision. Raises ``StoreError``
        at the end of the block when that commit fails; then none of the
        group's writes happened. Nested blocks join the outer group."""
        ...

    def listen(self, listener: Listener) -> int:
        """Call ``listener(events)`` after every commit from now on, in the
        committing thread with the store lock held (once per ``batch()``,
        with all of its events). ``None`` instead of events: the state was
        re-read from the backend. A listener must be quick and must not
        write. Returns the revision it starts after."""
        ...

    def unlisten(self, listener: Listener) -> None: ...


def local_store(store: Store) -> LocalStore | None:
    """``store``'s in-process abilities, or ``None`` for a store that
    answers over a network (etcd). The one place code asks what a backend
    can do beyond the ``Store`` protocol."""
    return store.local()
