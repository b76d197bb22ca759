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

When the store has compacted the history the hub needs (it fell far behind,
or the etcd cluster compacted), the hub re-reads the whole keyspace and
delivers a *resync* batch computed against the keys it knew: a PUT for each
key that is new or whose ``mod_revision`` changed (``prev`` is None, the
intermediate history is lost) and a DELETE for each key that vanished (with
``kv.mod_revision`` = the revision of the re-read and ``prev`` None). Level-
triggered subscribers therefore converge without doing anything special.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from cove.errors import StoreError, WatchCompacted
from cove.store.base import Event, EventType, KeyValue, Store, Watch

log = logging.getLogger(__name__)

Callback = Callable[[Sequence[Event]], None]

_RETRY_DELAY = 1.0  # seconds before re-watching after a store failure


class Subscription:
    """A subscriber's handle; after ``cancel()`` returns no new callback
    starts (one already running on the hub thread finishes)."""

    def __init__(self, hub: WatchHub, prefix: str, callback: Callback) -> None:
        self.prefix = prefix
        self.callback = callback
        self.active = True
        self._hub = hub

    def cancel(self) -> None:
        self.active = False
        self._hub._remove(self)


class WatchHub:
    """Fans one store watch out to prefix subscribers (see module docstring)."""

    def __init__(self, store: Store, *, poll: float = 0.5) -> None:
        self._store = store
        self._poll = poll
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self._delivered = threading.Condition(self._lock)
        self._revision = 0
        self._mod_revisions: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Watch | None = None

    @property
    def revision(self) -> int:
        """The last revision delivered to every subscriber."""
        with self._lock:
            return self._revision

    def subscribe(self, prefix: str, callback: Callback) -> Subscription:
        sub = Subscription(self, prefix, callback)
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
        self._watch = self._snapshot()
        self._thread = threading.Thread(target=self._run, name="cove-watch-hub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._thread = None
        with self._lock:
            self._delivered.notify_all()

    def wait_for(self, revision: int, timeout: float | None = None) -> bool:
        """Block until ``revision`` has been delivered to every subscriber;
        False when ``timeout`` passes first or the hub stops."""
        with self._lock:
            return self._delivered.wait_for(
                lambda: self._revision >= revision or self._stop.is_set(), timeout
            ) and (self._revision >= revision)

    # -- the hub thread ------------------------------------------------------

    def _snapshot(self) -> Watch:
        """Read every key, remember its mod revision, and watch what follows."""
        current = self._store.range("")
        with self._lock:
            self._mod_revisions = {kv.key: kv.mod_revision for kv in current.kvs}
            self._revision = max(self._revision, current.revision)
            self._delivered.notify_all()
        return self._store.watch("", current.revision + 1)

    def _resync(self) -> Watch:
        before = self._mod_revisions
        current = self._store.range("")
        rev = current.revision
        events = [
            Event(EventType.PUT, kv) for kv in current.kvs if before.get(kv.key) != kv.mod_revision
        ]
        now = {kv.key for kv in current.kvs}
        events += [
            Event(EventType.DELETE, KeyValue(key, b"", 0, rev, 0))
            for key in sorted(before)
            if key not in now
        ]
        log.warning("watch history compacted; resynced %s changed keys at %s", len(events), rev)
        self._deliver(sorted(events, key=lambda e: e.revision), rev)
        return self._store.watch("", rev + 1)

    def _run(self) -> None:
        watch = self._watch
        while not self._stop.is_set():
            try:
                if watch is None:
                    watch = self._resync()
                    self._watch = watch
                events = watch.next(timeout=self._poll)
                if events:
                    self._deliver(events, events[-1].revision)
            except WatchCompacted:
                watch = None
            except StoreError:
                if self._stop.is_set():
                    break
                log.exception("store watch failed; re-reading in %ss", _RETRY_DELAY)
                if watch is not None:
                    watch.close()
                watch = None
                self._stop.wait(_RETRY_DELAY)

    def _deliver(self, events: Sequence[Event], revision: int) -> None:
        for ev in events:
            if ev.type is EventType.PUT:
                self._mod_revisions[ev.kv.key] = ev.kv.mod_revision
            else:
                self._mod_revisions.pop(ev.kv.key, None)
        for sub in self._subs:
            mine = [e for e in events if e.kv.key.startswith(sub.prefix)]
            if mine and sub.active:
                try:
                    sub.callback(mine)
                except Exception:
                    log.exception("watch subscriber for %r failed", sub.prefix)
        with self._lock:
            self._revision = max(self._revision, revision)
            self._delivered.notify_all()


class Follower:
    """Subscriptions of one consumer to ``prefixes`` of ``hub``, or of a
    private hub over ``store`` when no shared one is given (tests, tools)."""

    def __init__(
        self,
        store: Store,
        hub: WatchHub | None,
        prefixes: Sequence[str],
        callback: Callback,
    ) -> None:
        self._own = hub is None
        self.hub = hub or WatchHub(store)
        self._subs = [self.hub.subscribe(p, callback) for p in prefixes]
        if self._own:
            self.hub.start()

    def stop(self) -> None:
        for sub in self._subs:
            sub.cancel()
        if self._own:
            self.hub.stop()
