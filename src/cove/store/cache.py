"""The agent's copy of the cluster-wide records its passes read, kept
current by the hub's watch.

Policy compiles, the registrar, the container and overlay reconcilers
react to every change of any host's containers and endpoints by looking at
all of them again. Read from the store, that look costs each agent the
whole prefix per change (about 130 MB at 100,000 containers); read from
here it costs none: ``StoreCache`` is filled once at start with one read
per prefix and then follows the ``WatchHub``'s events (the hub applies each
batch here before any subscriber hears of it, so a pass kicked by an event
finds that event here). After a resync (the watch's history was compacted,
or an in-process store re-read its file) the hub loads it again from the
same read.

``CachedReads`` is a ``Store`` whose ``get``/``range``/``keys`` of a cached
prefix answer from the cache and whose ``revision`` is the cache's; every
other call goes to the store. It is for passes that follow the hub, never
for a request that must read its own write: on etcd the cache runs a few
milliseconds behind the store.

Prefixes must not overlap. Values are the store's own ``KeyValue``
objects: nothing is copied or decoded here.

A *partial* prefix (``partial=``) is one the agent follows in parts: on
etcd an agent watches the endpoints and addresses only of the networks it
has containers on. Nothing under it is read at start; ``follow(prefix, kvs,
revision)`` adds a part (a prefix inside it) with its content, and
``unfollow`` drops one. A read of the partial prefix itself, or of a prefix
that holds followed parts, answers with what is followed (the agent's view);
a read of anything else under it goes to the store.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Callable, Iterable, Sequence

from cove.errors import InvalidArgument
from cove.store.base import (
    Event,
    EventType,
    KeyValue,
    RangeResult,
    Store,
)
from cove.store.proxy import StoreProxy
from cove.store.scope import KeyRange


class StoreCache:
    """Keys and values under ``prefixes``, at ``revision`` (see the module
    docstring). Thread-safe: the hub writes, passes read."""

    def __init__(self, prefixes: Sequence[str], partial: Sequence[str] = ()) -> None:
        ordered = sorted(set(prefixes) | set(partial))
        for a, b in itertools.pairwise(ordered):
            if b.startswith(a):
                raise InvalidArgument(f"cached prefixes overlap: {a!r} and {b!r}")
        if any(not p for p in ordered):
            raise InvalidArgument("a cached prefix must not be empty (the whole keyspace)")
        self.prefixes: tuple[str, ...] = tuple(sorted(set(prefixes)))
        self.partial: tuple[str, ...] = tuple(sorted(set(partial)))
        # The followed parts of the partial prefixes (each keeps a floor).
        self._parts: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._advanced = threading.Condition(self._lock)
        self._values: dict[str, KeyValue] = {}
        self._keys: list[str] = []  # sorted
        self._revision = 0
        # Per prefix, the revision its content was read at: the watch's
        # events up to it are already in (a fill reads each prefix at its
        # own revision).
        self._floors: dict[str, int] = {}
        self._loaded = False

    @property
    def loaded(self) -> bool:
        """Whether ``load`` or ``fill`` ran: before, nothing is cached."""
        return self._loaded

    @property
    def revision(self) -> int:
        """The store revision the cache reflects."""
        with self._lock:
            return self._revision

    def size(self) -> tuple[int, int]:
        """How many keys are cached, and the bytes of their values."""
        with self._lock:
            return len(self._values), sum(len(kv.value) for kv in self._values.values())

    @property
    def followed(self) -> tuple[str, ...]:
        """The parts of the partial prefixes held."""
        return self._parts

    def covers(self, prefix: str) -> bool:
        """Whether a read of ``prefix`` (or of the key ``prefix``) can be
        answered here."""
        if prefix.startswith(self.prefixes):
            return True
        if not prefix.startswith(self.partial):
            return False
        parts = self._parts
        return (
            prefix in self.partial
            or prefix.startswith(parts)
            or any(p.startswith(prefix) for p in parts)
        )

    def holds(self, key: str) -> bool:
        """Whether changes of ``key`` are followed here."""
        return key.startswith(self.prefixes) or key.startswith(self._parts)

    # -- filling -----------------------------------------------------------------

    def fill(self, store: Store) -> int:
        """One read per prefix; returns the lowest revision read, which the
        cache then claims: the watch's events after it bring each prefix
        up to date (those a prefix's read already had are skipped)."""
        kvs: list[KeyValue] = []
        floors: dict[str, int] = {}
        for prefix in self.prefixes:
            result = store.range(prefix)
            kvs.extend(result.kvs)
            floors[prefix] = result.revision
        if not floors:  # only partial prefixes: nothing is followed yet
            floors[""] = store.revision
        self._replace(kvs, floors)
        return min(floors.values())

    def load(self, kvs: Iterable[KeyValue], revision: int, within: KeyRange | None = None) -> None:
        """Replace the content with the cached prefixes' share of ``kvs``
        (a read of everything at ``revision``, or with ``within`` of that
        range: the prefixes it holds are replaced, the others kept)."""
        if within is None:
            held = (*self.prefixes, *self._parts)
            self._replace(kvs, dict.fromkeys(held, revision) or {"": revision})
            return
        prefixes = tuple(p for p in (*self.prefixes, *self._parts) if within.holds(p))
        if not prefixes:
            return
        self._load(kvs, revision, prefixes)

    def follow(self, prefix: str, kvs: Iterable[KeyValue], revision: int) -> None:
        """Hold ``prefix`` (a part of a partial prefix) from now on, with
        ``kvs``, a read of it at ``revision``."""
        if not prefix.startswith(self.partial) or prefix in self.partial:
            raise InvalidArgument(f"not a part of a partial cached prefix: {prefix!r}")
        with self._lock:
            if any(p.startswith(prefix) or prefix.startswith(p) for p in self._parts):
                raise InvalidArgument(f"followed prefixes overlap: {prefix!r}")
            self._parts = tuple(sorted((*self._parts, prefix)))
            self._load_locked(kvs, revision, (prefix,))

    def unfollow(self, prefix: str) -> list[KeyValue]:
        """Stop holding ``prefix`` (see ``follow``); returns what it held."""
        with self._lock:
            if prefix not in self._parts:
                return []
            self._parts = tuple(p for p in self._parts if p != prefix)
            gone = [v for k, v in self._values.items() if k.startswith(prefix)]
            values = {k: v for k, v in self._values.items() if not k.startswith(prefix)}
            self._values = values
            self._keys = sorted(values)
            self._floors = {p: f for p, f in self._floors.items() if p != prefix}
        return sorted(gone, key=lambda kv: kv.key)

    def _load(self, kvs: Iterable[KeyValue], revision: int, prefixes: tuple[str, ...]) -> None:
        with self._lock:
            self._load_locked(kvs, revision, prefixes)

    def _load_locked(
        self, kvs: Iterable[KeyValue], revision: int, prefixes: tuple[str, ...]
    ) -> None:
        fresh = {kv.key: kv for kv in kvs if kv.key.startswith(prefixes)}
        values = {k: v for k, v in self._values.items() if not k.startswith(prefixes)}
        values.update(fresh)
        self._values = values
        self._keys = sorted(values)
        self._floors = {**self._floors, **dict.fromkeys(prefixes, revision)}
        self._revision = max(self._revision, revision)
        self._advanced.notify_all()

    def _replace(self, kvs: Iterable[KeyValue], floors: dict[str, int]) -> None:
        held = (*self.prefixes, *self._parts)
        values = {kv.key: kv for kv in kvs if kv.key.startswith(held)}
        with self._lock:
            self._values = values
            self._keys = sorted(values)
            self._floors = floors
            self._revision = min(floors.values())
            self._loaded = True
            self._advanced.notify_all()

    def apply(self, events: Sequence[Event], revision: int) -> list[Event]:
        """Follow ``events`` (a batch up to ``revision``); returns them with
        ``prev`` filled from the cache where the watch left it out. An event
        older than what the cache holds for its key changes nothing."""
        out: list[Event] = []
        with self._lock:
            prefixes = (*self.prefixes, *self._parts)
            values, keys, floors = self._values, self._keys, self._floors
            for ev in events:
                key = ev.kv.key
                if not key.startswith(prefixes):
                    out.append(ev)
                    continue
                floor = next((f for p, f in floors.items() if p and key.startswith(p)), 0)
                old = values.get(key)
                if ev.revision <= floor or (old is not None and old.mod_revision >= ev.revision):
                    out.append(ev)  # news the read already had
                    continue
                if ev.type is EventType.PUT:
                    if old is None:
                        bisect.insort(keys, key)
                    values[key] = ev.kv
                elif old is not None:
                    del values[key]
                    del keys[bisect.bisect_left(keys, key)]
                out.append(ev if ev.prev is not None else Event(ev.type, ev.kv, old))
            self._revision = max(self._revision, revision)
            self._advanced.notify_all()
        return out

    def wait_for(self, revision: int, timeout: float) -> bool:
        """Block until the cache reflects ``revision``; False when
        ``timeout`` passes first."""
        with self._lock:
            return self._advanced.wait_for(
                lambda: self._loaded and self._revision >= revision, timeout
            )

    # -- reading -----------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        with self._lock:
            return self._values.get(key)

    def range(self, prefix: str) -> RangeResult:
        with self._lock:
            keys = self._keys
            lo = bisect.bisect_left(keys, prefix)
            hi = bisect.bisect_left(keys, _after(prefix), lo) if prefix else len(keys)
            values = self._values
            return RangeResult(tuple(values[k] for k in keys[lo:hi]), self._revision)


def _after(prefix: str) -> str:
    """The first string after every string that starts with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class CachedReads(StoreProxy):
    """A ``Store`` that reads cached prefixes from ``cache`` (once it is
    loaded) and does everything else on ``store``; see the module
    docstring for whom it is for."""

    def __init__(
        self,
        store: Store,
        cache: StoreCache | None,
        *,
        settled: Callable[[float], bool] | None = None,
    ) -> None:
        """Without ``cache``, every call goes to ``store``. ``settled``
        (a hub watching several streams): wait until the hub delivered
        every write this agent made, for ``caught_up``."""
        super().__init__(store)
        self._cache = cache
        self._settled = settled

    def _cached(self, prefix: str) -> bool:
        cache = self._cache
        return cache is not None and cache.loaded and cache.covers(prefix)

    def caught_up(self, timeout: float) -> Store:
        """These reads once the cache holds every write made before this
        call (one small read of the store's revision, then a wait for the
        watch to deliver it), else the store: for a pass that compares the
        records with something a request may have changed a moment ago
        (the kernel), which a lagging cache would call a leftover."""
        cache = self._cache
        if cache is None:
            return self._store
        if self._settled is not None:
            # Scoped: no single revision to reach; this agent's own writes
            # are what a pass must not mistake (and it costs no request).
            if cache.loaded and self._settled(timeout):
                return self
            return self._store
        if cache.wait_for(self._store.revision, timeout):
            return self
        return self._store

    def get(self, key: str) -> KeyValue | None:
        if self._cache is not None and self._cached(key):
            return self._cache.get(key)
        return self._store.get(key)

    def range(self, prefix: str, *, end: str | None = None) -> RangeResult:
        if end is None and self._cache is not None and self._cached(prefix):
            return self._cache.range(prefix)
        return self._store.range(prefix, end=end)

    def keys(self, prefix: str, *, end: str | None = None) -> RangeResult:
        if end is None and self._cache is not None and self._cached(prefix):
            got = self._cache.range(prefix)
            return RangeResult(
                tuple(
                    KeyValue(kv.key, b"", kv.create_revision, kv.mod_revision, kv.version, kv.lease)
                    for kv in got.kvs
                ),
                got.revision,
            )
        return self._store.keys(prefix, end=end)

    @property
    def revision(self) -> int:
        """The cache's revision (what cached reads reflect); the store's
        before the cache is loaded."""
        if self._cache is not None and self._cache.loaded:
            return self._cache.revision
        return self._store.revision

    def close(self) -> None:
        """The store belongs to whoever opened it: nothing to close here."""
