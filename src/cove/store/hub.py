"""One watch over the whole keyspace, fanned out to many subscribers.

Every watcher of the agent (reconcilers, DNS, registry blocking queries, LB)
subscribes to a key prefix here instead of opening its own store watch::

    hub = WatchHub(store)
    hub.start()
    sub = hub.subscribe("endpoints/", on_events)   # on_events(events) on the hub thread
    kvs = store.range("endpoints/")                 # then read the current state;
    ...                                             # events <= kvs.revision are old news
    sub.cancel()
    hub.stop()

Callbacks run on the hub's thread, one call per subscriber per batch, with
the batch's events under the subscriber's prefix in revision order; a
callback must be quick (asyncio users hand over with
``loop.call_soon_threadsafe``). An exception in a callback is logged and does
not affect other subscribers.

On an in-process store (memory, SQLite) the hub does not watch: the store
calls it after each commit (``LocalStore.listen``), and it hands the events
to its thread only when a subscriber there wants them. A subscriber made
with ``inline=True`` is called right there, in the committing thread with the
store lock held, before the writer is answered: it must be quick, thread-safe
and must not write. The Consul API's blocking queries are such a subscriber:
a registration committed on the API's own loop wakes them with no thread in
between. (On etcd, inline subscribers run on the hub thread like the rest.)

When a watch breaks (an etcd member died or lost its leader), the hub
watches again from the revision after the last one it delivered, on
whichever member the store now uses: nothing is lost or delivered twice.
When the store has compacted the history the hub needs (it fell far behind,
or the etcd cluster compacted), the hub re-reads the whole keyspace and
delivers a *resync* batch computed against the keys it knew: a PUT for each
key that is new or whose ``mod_revision`` changed (``prev`` is None, the
intermediate history is lost) and a DELETE for each key that vanished (with
``kv.mod_revision`` = the revision of the re-read and ``prev`` None). Level-
triggered subscribers therefore converge without doing anything special.

With ``cache`` prefixes the hub keeps a ``StoreCache`` of them (see
``cove.store.cache``): filled at start, updated from each batch before any
subscriber is called, loaded again on a resync. ``reads`` is the ``Store``
view that passes read through. The hub then watches etcd without previous
values (each change crosses the network once, not twice) and fills
``Event.prev`` from the cache for the cached prefixes; a subscriber to any
other prefix gets ``prev`` None from etcd.

With ``partial`` prefixes (on etcd) the hub follows only parts of them:
``follow(prefixes)`` opens a stream for each part, reads it, loads the
cache and delivers its keys as PUTs; ``unfollow`` closes the stream, drops
the part from the cache and delivers its keys as DELETEs. Such a *replay*
reaches the subscribers that keep state (``replays=True``, the default),
not the event log: nothing changed in the store. ``widen`` (the agent
sets it) names the parts to follow when this agent writes a key under a
partial prefix that no stream covers, so that what an agent writes is
always in its view before the write returns.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from cove.errors import CoveError, InvalidArgument, StoreError, WatchCompacted
from cove.store.base import (
    Event,
    EventType,
    KeyValue,
    LocalStore,
    RangeResult,
    Store,
    Watch,
    local_store,
)
from cove.store.cache import CachedReads, StoreCache
from cove.store.memory import DEFAULT_HISTORY
from cove.store.scope import KeyRange, NotingStore

log = logging.getLogger(__name__)

Callback = Callable[[Sequence[Event]], None]

_RETRY_DELAY = 1.0  # seconds before re-watching after a store failure
# Commits queued for a stuck thread subscriber before they are merged into
# one batch of each key's last change (as a resync after compaction would):
# the lag a watching hub tolerates before its history is compacted away.
MAX_QUEUED = DEFAULT_HISTORY
# How long the hub gathers what several streams sent before delivering it
# in revision order: etcd sends a commit's events to every stream at once,
# so the parts of one transaction (a name claim on one stream, the record
# on another) arrive within a few milliseconds. The hub waits longer, up to
# ``OWN_WRITE_WAIT``, only while a part of this agent's own write (which it
# knows the streams of) is still to come: an answer cached right after a
# write (DNS) must not be invalidated late by that write's own events.
REORDER_WINDOW = 0.002
OWN_WRITE_WAIT = 0.1


class _Stream:
    """One watched key range: one store watch, fed by a thread of its own."""

    def __init__(self, keys: KeyRange, *, loaded: bool = True) -> None:
        self.range = keys
        # A followed part: its first read is still to be delivered.
        self.loaded = loaded
        self.stopped = threading.Event()  # unfollowed (its thread)
        self.dropped = False  # unfollowed (the hub thread)
        self.seen = 0  # the last revision delivered from it (hub lock)
        self.known = 0  # the last revision this agent wrote in it (hub lock)
        self.resume = 0  # the revision its watch (re)starts at (its thread)
        self.watch: Watch | None = None
        self.thread: threading.Thread | None = None

    def read(self, store: Store, *, keys_only: bool) -> RangeResult:
        read = store.keys if keys_only else store.range
        return read(self.range.start, end=self.range.end)

    def open(self, store: Store, *, prev: bool) -> Watch:
        return store.watch(self.range.start, self.resume, prev=prev, end=self.range.end)


_Item = tuple[_Stream, Sequence[Event] | None, RangeResult | None]


class Subscription:
    """A subscriber's handle; after ``cancel()`` returns no new callback
    starts (one already running on the hub thread finishes)."""

    def __init__(
        self,
        hub: WatchHub,
        prefix: str,
        callback: Callback,
        inline: bool = False,
        replays: bool = True,
    ) -> None:
        self.prefix = prefix
        self.callback = callback
        self.inline = inline
        self.replays = replays
        self.active = True
        self._hub = hub

    def cancel(self) -> None:
        self.active = False
        self._hub._remove(self)


class WatchHub:
    """Fans one store watch out to prefix subscribers (see module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        poll: float = 0.5,
        listen: bool | None = None,
        cache: Sequence[str] = (),
        partial: Sequence[str] = (),
        ranges: Sequence[KeyRange] = (),
        window: float = REORDER_WINDOW,
    ) -> None:
        """``listen``: take commits from an in-process store's listener
        (the default for one) rather than a watch of its history;
        ``cache``: the prefixes to keep in memory for ``reads``;
        ``ranges``: what to watch (default: the whole keyspace), one
        stream each (see ``cove.store.scope``), when the hub watches: a
        listening hub hears every commit of its in-process store;
        ``partial``: cached prefixes followed in parts (see the module
        docstring), outside ``ranges``; held whole when listening."""
        self._store = store
        local = local_store(store)
        if listen is False:
            local = None
        if local is not None or not ranges:
            cache, partial = (*cache, *partial), ()
        self._cache = StoreCache(cache, partial) if cache or partial else None
        self._poll = poll
        self._window = window
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self._delivered = threading.Condition(self._lock)
        self._revision = 0
        self._mod_revisions: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Listening mode (in-process stores): commits waiting for the thread.
        self._local: LocalStore | None = local
        self._listening = local is not None
        self._queue: deque[tuple[Sequence[Event], int]] = deque()
        self._queued = threading.Condition(self._lock)
        # Watching: one stream per range, all feeding the inbox.
        watched = list(ranges) if ranges and not self._listening else [KeyRange.everything()]
        self._streams = [_Stream(r) for r in watched]
        self._scoped = len(self._streams) > 1
        self._inbox: queue.Queue[_Item] = queue.Queue()
        if self._cache is not None and self.scoped:
            for prefix in self._cache.prefixes:
                if not any(s.range.holds(prefix) for s in self._streams):
                    raise InvalidArgument(f"a cached prefix is not watched whole: {prefix!r}")
            for prefix in self._cache.partial:
                if any(s.range.overlaps(KeyRange.prefix(prefix)) for s in self._streams):
                    raise InvalidArgument(f"a partial prefix is watched: {prefix!r}")
        # Followed parts of the partial prefixes, by prefix.
        self._dynamic: dict[str, _Stream] = {}
        self._following = threading.Lock()
        self.widen: Callable[[str], Sequence[str]] | None = None
        # Writes through ``writes`` tell the hub what to wait for (scoped).
        self.writes: Store = NotingStore(store, self.note) if self.scoped else store
        self.reads = CachedReads(
            self.writes, self._cache, settled=self._settled if self.scoped else None
        )

    @property
    def scoped(self) -> bool:
        """Whether the hub watches several ranges rather than everything."""
        return self._scoped

    @property
    def followed(self) -> tuple[str, ...]:
        """The parts of the partial prefixes followed now."""
        return tuple(sorted(self._dynamic))

    @property
    def revision(self) -> int:
        """The last revision delivered to every subscriber. Scoped, a quiet
        stream cannot say how far it has got: below this agent's earliest
        write not yet delivered, the newest revision delivered."""
        with self._lock:
            pending = [s.known - 1 for s in self._streams if s.known > s.seen]
            return min([self._revision, *pending])

    def stats(self) -> list[tuple[str, str, float]]:
        """Metrics: what the hub watches and holds."""
        keys, size = self._cache.size() if self._cache is not None else (0, 0)
        return [
            ("cove_watch_streams", "Store watch streams (key ranges) the agent follows.",
             float(len(self._streams))),
            ("cove_watch_cache_keys", "Store keys held in the agent's watch cache.", float(keys)),
            ("cove_watch_cache_bytes", "Bytes of values in the agent's watch cache.", float(size)),
        ]  # fmt: skip

    def note(self, keys: Iterable[str], revision: int) -> None:
        """This agent wrote ``keys`` at ``revision``: ``wait_for`` waits
        for those events (``NotingStore`` calls this). A key under a
        partial prefix that no stream covers is followed first (``widen``)."""
        keys = list(keys)
        cache, widen = self._cache, self.widen
        if widen is not None and cache is not None and cache.partial and self._thread:
            streams = self._streams
            parts = [
                part
                for key in keys
                if key.startswith(cache.partial) and not any(key in s.range for s in streams)
                for part in widen(key)
            ]
            if parts:
                try:
                    self.follow(parts)
                except CoveError as exc:
                    log.warning("cannot follow %s yet: %s", ", ".join(parts), exc.message)
        with self._lock:
            for key in keys:
                for stream in self._streams:
                    if key in stream.range:
                        stream.known = max(stream.known, revision)
                        break

    def _covers(self, revision: int) -> bool:
        """Hub lock held."""
        if not self.scoped:
            return self._revision >= revision
        return all(s.seen >= min(revision, s.known) for s in self._streams)

    def _settled(self, timeout: float) -> bool:
        """Every write this agent made so far is delivered (scoped)."""
        return self.wait_for(sys.maxsize, timeout)

    def subscribe(
        self, prefix: str, callback: Callback, *, inline: bool = False, replays: bool = True
    ) -> Subscription:
        """Call ``callback(events)`` for changes under ``prefix``; with
        ``inline``, in the committing thread on an in-process store (see
        the module docstring); without ``replays``, not for what following
        or unfollowing a part brings (nothing changed in the store)."""
        sub = Subscription(self, prefix, callback, inline, replays)
        with self._lock:
            self._subs = [*self._subs, sub]  # copy on write: the thread iterates freely
        return sub

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            self._subs = [s for s in self._subs if s is not sub]

    def start(self) -> None:
        """Read the current revision and start delivering what follows it."""
        if self._thread is not None:
            return
        if self._listening:
            self._listen()
            target = self._run_queue
        else:
            self._snapshot()
            for stream in self._streams:
                self._start_pump(stream)
            target = self._run
        self._thread = threading.Thread(target=target, name="cove-watch-hub", daemon=True)
        self._thread.start()

    def _start_pump(self, stream: _Stream) -> None:
        stream.thread = threading.Thread(
            target=self._pump, args=(stream,), name="cove-watch-stream", daemon=True
        )
        stream.thread.start()

    def follow(self, prefixes: Iterable[str]) -> None:
        """Watch and hold these parts of the partial prefixes from now on
        (see the module docstring); a part that overlaps one followed
        replaces it. Raises ``StoreError`` when the store cannot be read
        (what was followed before stays). Nothing to do when listening."""
        cache = self._cache
        if self._listening or cache is None:
            return
        if self._thread is None:
            raise InvalidArgument("the hub follows parts once it has started")
        with self._following:
            for prefix in prefixes:
                if prefix in self._dynamic:
                    continue
                if not prefix.startswith(cache.partial) or prefix in cache.partial:
                    raise InvalidArgument(f"not a part of a partial prefix: {prefix!r}")
                current = self._store.range(prefix)
                for other in [
                    p for p in self._dynamic if p.startswith(prefix) or prefix.startswith(p)
                ]:
                    self._unfollow(other)
                stream = _Stream(KeyRange.prefix(prefix), loaded=False)
                stream.resume = current.revision + 1
                with self._lock:
                    self._streams = [*self._streams, stream]
                self._dynamic[prefix] = stream
                self._inbox.put((stream, None, current))
                self._start_pump(stream)

    def unfollow(self, prefixes: Iterable[str]) -> None:
        """Stop following these parts (see ``follow``)."""
        with self._following:
            for prefix in prefixes:
                self._unfollow(prefix)

    def _unfollow(self, prefix: str) -> None:
        """``_following`` held."""
        stream = self._dynamic.pop(prefix, None)
        if stream is None:
            return
        stream.stopped.set()
        with self._lock:
            self._streams = [s for s in self._streams if s is not stream]
            watch = stream.watch
        if watch is not None:
            watch.close()
        self._inbox.put((stream, None, None))

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._queued.notify_all()
            watches = [s.watch for s in self._streams if s.watch is not None]
        if self._local is not None:
            self._local.unlisten(self._on_commit)
        for watch in watches:
            watch.close()
        me = threading.current_thread()
        for thread in [s.thread for s in self._streams] + [self._thread]:
            if thread is not None and thread is not me:
                thread.join(timeout=10)
        self._thread = None
        with self._lock:
            self._delivered.notify_all()
            self._queued.notify_all()

    def behind(self, revision: int) -> bool:
        """Whether a reader that read the store at ``revision`` may know
        more than the subscribers have heard: never on a listening hub
        (its inline subscribers hear each commit before it returns); on a
        watching one, until ``wait_for(revision)`` would return."""
        if self._listening:
            return False
        with self._lock:
            return not self._covers(revision)

    def wait_for(self, revision: int, timeout: float | None = None) -> bool:
        """Block until ``revision`` has been delivered to every subscriber;
        False when ``timeout`` passes first or the hub stops. Scoped: until
        every write of this agent's up to ``revision`` has been (another
        agent's write in a quiet stream cannot be told from none)."""
        with self._lock:
            return self._delivered.wait_for(
                lambda: self._covers(revision) or self._stop.is_set(), timeout
            ) and self._covers(revision)

    # -- the hub thread and the stream threads -------------------------------

    def _snapshot(self) -> None:
        """Read every watched key (not its value), remember its mod
        revision, and set each stream to watch what follows its read."""
        mods: dict[str, int] = {}
        for stream in self._streams:
            current = stream.read(self._store, keys_only=True)
            mods.update((kv.key, kv.mod_revision) for kv in current.kvs)
            stream.seen = current.revision
            stream.resume = current.revision + 1
        if self._cache is not None:
            # After the keys: what changed in between is applied twice,
            # which the cache tolerates; nothing is missed.
            self._cache.fill(self._store)
        with self._lock:
            self._mod_revisions = mods
            self._revision = max([self._revision, *(s.seen for s in self._streams)])
            self._delivered.notify_all()

    def _pump(self, stream: _Stream) -> None:
        """A stream's thread: its watch's events (or, when the history it
        needs was compacted, a fresh read of its range) into the inbox.
        After a broken watch (an etcd member died or lost its leader) it
        watches again right after the last revision it passed on, on
        whichever member the store now uses: nothing lost or repeated."""
        # With a cache, the previous values of the keys it holds come from
        # it; etcd need not send every value twice.
        prev = self._cache is None
        watch: Watch | None = None
        while not self._stop.is_set() and not stream.stopped.is_set():
            try:
                if watch is None:
                    watch = stream.open(self._store, prev=prev)
                    with self._lock:
                        stream.watch = watch
                    if self._stop.is_set() or stream.stopped.is_set():
                        break
                events = watch.next(timeout=self._poll)
                if events and not stream.stopped.is_set():
                    stream.resume = events[-1].revision + 1
                    self._inbox.put((stream, events, None))
            except WatchCompacted:
                if watch is not None:
                    watch.close()
                watch = None
                try:
                    current = stream.read(self._store, keys_only=False)
                except StoreError as exc:
                    log.warning("cannot re-read the store after a compaction: %s", exc.message)
                    self._stop.wait(_RETRY_DELAY)
                    continue
                stream.resume = current.revision + 1
                self._inbox.put((stream, None, current))
            except StoreError as exc:
                if self._stop.is_set() or stream.stopped.is_set():
                    break
                log.warning(
                    "store watch failed (%s); resuming at revision %s in %ss",
                    exc.message,
                    stream.resume,
                    _RETRY_DELAY,
                )
                if watch is not None:
                    watch.close()
                watch = None
                self._stop.wait(_RETRY_DELAY)
        if watch is not None:
            watch.close()

    def _run(self) -> None:
        """Deliver the inbox. Several streams' news is gathered for a
        moment and delivered in revision order (see ``REORDER_WINDOW``)."""
        while not self._stop.is_set():
            try:
                items = [self._inbox.get(timeout=self._poll)]
            except queue.Empty:
                continue
            if self.scoped:
                self._gather(items)
            try:
                self._take(items)
            except Exception:
                log.exception("the watch hub failed to deliver a batch")

    def _gather(self, items: list[_Item]) -> None:
        """Add what the other streams send within the window (longer while
        ``_awaited``, up to ``OWN_WRITE_WAIT``)."""
        start = time.monotonic()
        longest = max(self._window, OWN_WRITE_WAIT)
        while True:
            elapsed = time.monotonic() - start
            if elapsed >= longest or (elapsed >= self._window and not self._awaited(items)):
                return
            wait = self._window - elapsed if elapsed < self._window else 0.005
            try:
                items.append(self._inbox.get(timeout=wait))
            except queue.Empty:
                continue

    def _awaited(self, items: Sequence[_Item]) -> bool:
        """Whether a part of one of this agent's own writes, no newer than
        what ``items`` hold, has yet to come on some stream."""
        newest = max((b[-1].revision for _, b, _ in items if b), default=0)
        if not newest:
            return False
        got: dict[_Stream, int] = {}
        for stream, batch, _ in items:
            if batch:
                got[stream] = max(got.get(stream, 0), batch[-1].revision)
        with self._lock:
            return any(
                s.seen < s.known <= newest and got.get(s, 0) < s.known for s in self._streams
            )

    def _take(self, items: Sequence[_Item]) -> None:
        events: list[Event] = []
        tops: dict[_Stream, int] = {}
        for stream, batch, current in items:
            if stream.dropped:
                continue
            if batch is None:  # a re-read, a first read or an unfollow
                if events:  # what came before it goes first
                    self._deliver(sorted(events, key=_revision_of), tops)
                    events, tops = [], {}
                if current is None:
                    self._drop(stream)
                elif not stream.loaded:
                    self._load(stream, current)
                else:
                    self._resync(stream, current)
            elif batch:
                events.extend(batch)
                tops[stream] = max(tops.get(stream, 0), batch[-1].revision)
        if events:
            self._deliver(sorted(events, key=_revision_of), tops)

    def _load(self, stream: _Stream, current: RangeResult) -> None:
        """A followed part's first read: into the cache, and to the
        subscribers as PUTs (a replay)."""
        if self._cache is not None:
            self._cache.follow(stream.range.start, current.kvs, current.revision)
        known = self._mod_revisions
        events = [
            Event(EventType.PUT, kv) for kv in current.kvs if known.get(kv.key) != kv.mod_revision
        ]
        stream.loaded = True
        self._deliver(
            sorted(events, key=_revision_of), {stream: current.revision}, cached=True, replay=True
        )

    def _drop(self, stream: _Stream) -> None:
        """An unfollowed part: out of the cache, and to the subscribers as
        DELETEs (a replay) at the newest revision delivered."""
        stream.dropped = True
        rev = self._revision
        gone: list[KeyValue] = []
        if self._cache is not None:
            gone = self._cache.unfollow(stream.range.start)
        mods = self._mod_revisions
        for key in [k for k in mods if k in stream.range]:
            del mods[key]
        events = [Event(EventType.DELETE, KeyValue(kv.key, b"", 0, rev, 0), kv) for kv in gone]
        self._call([s for s in self._subs if s.replays], events)

    def _resync(self, stream: _Stream, current: RangeResult) -> None:
        events, rev = self._resync_events(current, stream.range)
        self._deliver(events, {stream: rev}, cached=True)

    def _resync_events(
        self, current: RangeResult, keys: KeyRange | None = None
    ) -> tuple[list[Event], int]:
        """The difference between ``current`` (a read of ``keys``, default
        everything) and the keys the hub knew there."""
        rev = current.revision
        within = keys or KeyRange.everything()
        before = {k: m for k, m in self._mod_revisions.items() if k in within}
        if self._cache is not None:
            self._cache.load(current.kvs, rev, within=keys)
        events = [
            Event(EventType.PUT, kv) for kv in current.kvs if before.get(kv.key) != kv.mod_revision
        ]
        now = {kv.key for kv in current.kvs}
        events += [
            Event(EventType.DELETE, KeyValue(key, b"", 0, rev, 0))
            for key in sorted(before)
            if key not in now
        ]
        log.warning("watch history lost; resynced %s changed keys at %s", len(events), rev)
        return sorted(events, key=_revision_of), rev

    def _deliver(
        self,
        events: Sequence[Event],
        tops: dict[_Stream, int],
        *,
        cached: bool = False,
        replay: bool = False,
    ) -> None:
        """``tops``: the newest revision each stream brought; ``cached``:
        the cache holds these already (a resync loaded it); ``replay``: for
        the subscribers to replays only (a followed part's first read)."""
        revision = max(tops.values())
        if self._cache is not None and not cached:
            events = self._cache.apply(events, revision)
        self._remember(events)
        self._call([s for s in self._subs if s.replays] if replay else self._subs, events)
        with self._lock:
            for stream, top in tops.items():
                stream.seen = max(stream.seen, top)
            self._revision = max(self._revision, revision)
            self._delivered.notify_all()

    def _remember(self, events: Sequence[Event]) -> None:
        mods = self._mod_revisions
        for ev in events:
            if ev.type is EventType.PUT:
                mods[ev.kv.key] = ev.kv.mod_revision
            else:
                mods.pop(ev.kv.key, None)

    @staticmethod
    def _call(subs: Sequence[Subscription], events: Sequence[Event]) -> None:
        for sub in subs:
            prefix = sub.prefix
            mine = [e for e in events if e.kv.key.startswith(prefix)] if prefix else events
            if mine and sub.active:
                try:
                    sub.callback(mine)
                except Exception:
                    log.exception("watch subscriber for %r failed", sub.prefix)

    # -- listening to an in-process store ----------------------------------------

    def _listen(self) -> None:
        store = self._local
        if store is None:
            raise StoreError("the hub's store offers no commit listener")
        with store.exclusive():  # no commit between the read and the listening
            current = store.range("")
            if self._cache is not None:
                self._cache.load(current.kvs, current.revision)
            with self._lock:
                self._mod_revisions = {kv.key: kv.mod_revision for kv in current.kvs}
                self._revision = max(self._revision, current.revision)
                self._delivered.notify_all()
            store.listen(self._on_commit)

    def _on_commit(self, events: Sequence[Event] | None) -> None:
        """The store's listener: in the committing thread, store lock held."""
        if events is None:  # the store re-read its file: deliver the difference
            events, rev = self._resync_events(self._store.range(""))
        else:
            rev = events[-1].kv.mod_revision
            if self._cache is not None:
                events = self._cache.apply(events, rev)
        self._remember(events)
        subs = self._subs
        self._call([s for s in subs if s.inline], events)
        wanted = any(
            not s.inline and any(e.kv.key.startswith(s.prefix) for e in events) for s in subs
        )
        with self._lock:
            if wanted or self._queue:
                self._queue.append((events, rev))
                if len(self._queue) > MAX_QUEUED:
                    self._merge_queue()
                self._queued.notify()
            else:  # every subscriber has what it wants of this commit
                self._revision = max(self._revision, rev)
                self._delivered.notify_all()

    def _merge_queue(self) -> None:
        """Replace the queued commits by each key's last change (``prev``
        None: the steps in between are lost, as in a resync). Hub lock held."""
        last: dict[str, Event] = {}
        for batch, _ in self._queue:
            for ev in batch:
                last[ev.kv.key] = ev
        merged = sorted((Event(e.type, e.kv) for e in last.values()), key=lambda e: e.revision)
        rev = self._queue[-1][1]
        self._queue.clear()
        self._queue.append((merged, rev))

    def _run_queue(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stop.is_set():
                    self._queued.wait(self._poll)
                if self._stop.is_set():
                    return
                batches = list(self._queue)
                self._queue.clear()
            events = [e for batch, _ in batches for e in batch]
            self._call([s for s in self._subs if not s.inline], events)
            with self._lock:
                self._revision = max(self._revision, batches[-1][1])
                self._delivered.notify_all()


def _revision_of(event: Event) -> int:
    return event.revision


class Follower:
    """Subscriptions of one consumer to ``prefixes`` of the agent's ``hub``
    (tests and tools that run a consumer alone start a hub of their own)."""

    def __init__(self, hub: WatchHub, prefixes: Sequence[str], callback: Callback) -> None:
        self.hub = hub
        self._subs = [hub.subscribe(p, callback) for p in prefixes]

    def stop(self) -> None:
        for sub in self._subs:
            sub.cancel()
