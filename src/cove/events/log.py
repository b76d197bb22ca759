"""The agent's recent changes, kept for event-stream readers.

``EventLog`` subscribes to the agent's ``WatchHub`` on the prefixes the
stream covers and keeps the last ``capacity`` changes in memory. A reader
asks for the changes after an index (``after``); one that is further behind
than the memory reaches (an agent restart, a long disconnect) is served from
the store's own history (a watch from ``since + 1``), and one further behind
than that history gets a single ``reset`` change: re-read the state, then
resume from the reset's index. Readers on an asyncio loop are woken with
``loop.call_soon_threadsafe`` (``add_waker``), so an idle stream costs
nothing.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence

from cove.errors import StoreError, WatchCompacted
from cove.events.change import Action, Change, Kind, changes_of
from cove.store.base import Event, Store
from cove.store.hub import Subscription, WatchHub

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 4096
_BACKFILL_WAIT = 0.2  # seconds a store watch may take to hand over its history


class EventLog:
    """See the module docstring. Thread-safe."""

    def __init__(self, store: Store, capacity: int = DEFAULT_CAPACITY) -> None:
        self._store = store
        self._ring: deque[Change] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        # Every change with an index above ``_covered`` is in the ring.
        self._covered = 0
        self._head = 0  # the newest index this log knows of
        self._seen = 0  # the newest store revision delivered, of any key
        self._seen_cond = threading.Condition(self._lock)
        self._wakers: dict[int, Callable[[], None]] = {}
        self._next_waker = 0
        self._subs: list[Subscription] = []
        self._hub: WatchHub | None = None

    def start(self, hub: WatchHub) -> None:
        """Follow ``hub`` from its current revision on."""
        # One subscription to the whole keyspace, not one per prefix: a
        # commit's changes must reach the log in revision order, and the hub
        # calls each subscription with its own share of a batch.
        self._hub = hub
        # Not the replays of a part followed or left: nothing changed.
        self._subs = [hub.subscribe("", self._on_events, replays=False)]
        revision = max(hub.revision, self._store.revision)
        with self._lock:
            self._covered = revision
            self._head = max(self._head, revision)
            self._seen = max(self._seen, revision)
            # Anything delivered before the revision was read is the store's
            # history's to give, not the ring's.
            kept = [c for c in self._ring if c.index > revision]
            self._ring.clear()
            self._ring.extend(kept)

    def stop(self) -> None:
        for sub in self._subs:
            sub.cancel()
        self._subs = []

    @property
    def head(self) -> int:
        """The newest index a reader can resume from."""
        with self._lock:
            return self._head

    def _on_events(self, events: Sequence[Event]) -> None:
        changes = changes_of(events)
        if events:
            with self._lock:
                self._seen = max(self._seen, events[-1].revision)
                self._seen_cond.notify_all()
        if not changes:
            return
        with self._lock:
            ring = self._ring
            for change in changes:
                if ring.maxlen is not None and len(ring) == ring.maxlen:
                    self._covered = max(self._covered, ring[0].index)
                    ring.popleft()
                if ring and change.index < ring[-1].index:
                    # A straggler from another watch stream (a scoped hub
                    # delivers each in order, several almost in order):
                    # in its place, so a reader from before it finds it.
                    at = bisect.bisect_right(ring, change.index, key=_index_of)
                    ring.insert(at, change)
                else:
                    ring.append(change)
            self._head = max(self._head, ring[-1].index)
            wakers = list(self._wakers.values())
        for wake in wakers:
            wake()

    def add_waker(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> int:
        """Set ``event`` on ``loop`` after every batch of changes; returns a
        handle for ``remove_waker``."""

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: its reader is gone
                loop.call_soon_threadsafe(event.set)

        with self._lock:
            self._next_waker += 1
            handle = self._next_waker
            self._wakers[handle] = wake
        return handle

    def remove_waker(self, handle: int) -> None:
        with self._lock:
            self._wakers.pop(handle, None)

    def wait_current(self, timeout: float) -> bool:
        """Block until every change committed before this call has reached
        the log (read-your-writes for a one-shot reader), or ``timeout``
        seconds pass; whether it caught up. Slow: call it off the event loop."""
        if not self._subs:
            return False  # not following a hub: nothing will arrive
        hub = self._hub
        if hub is not None and hub.scoped:
            # A hub of several streams cannot reach the store's revision
            # when the last write was in a range it does not watch; what it
            # can promise is every write this agent acknowledged.
            return hub.wait_for(sys.maxsize, timeout)
        target = self._store.revision
        with self._seen_cond:
            return self._seen_cond.wait_for(lambda: self._seen >= target, timeout)

    def needs_store(self, since: int) -> bool:
        """Whether ``after(since)`` reads the store's history (slow: call it
        off the event loop)."""
        with self._lock:
            return since < self._covered

    def after(self, since: int) -> list[Change]:
        """The changes with an index above ``since``, oldest first. From the
        store's history when the memory does not reach back that far; a
        single ``reset`` change when the store's history does not either."""
        with self._lock:
            covered = self._covered
            head = self._head
            if covered <= since <= head:
                return self._from_ring(since)
        if since > head:
            # Ahead of this log: news yet to come, or an index from another
            # store's history (a wiped state dir), which must start over.
            revision = self._store.revision
            if since <= revision:
                return []
            return [Change(revision, Kind.RESET, Action.UPDATE, "", {"since": str(since)})]
        older = self._from_store(since, covered)
        if older is None:
            head = self.head
            return [Change(head, Kind.RESET, Action.UPDATE, "", {"since": str(since)})]
        with self._lock:
            return older + self._from_ring(covered)

    def _from_ring(self, since: int) -> list[Change]:
        out: list[Change] = []
        for change in reversed(self._ring):
            if change.index <= since:
                break
            out.append(change)
        out.reverse()
        return out

    def _from_store(self, since: int, until: int) -> list[Change] | None:
        """Changes in (since, until] from the store's history; None when it
        was compacted away."""
        try:
            watch = self._store.watch("", since + 1)
        except WatchCompacted:
            return None
        events: list[Event] = []
        try:
            while True:
                batch = watch.next(timeout=_BACKFILL_WAIT)
                if not batch:
                    break
                events.extend(e for e in batch if e.revision <= until)
                if batch[-1].revision >= until:
                    break
        except WatchCompacted:
            return None
        except StoreError as exc:
            log.warning("event backfill from %s failed: %s", since, exc)
            return None
        finally:
            watch.close()
        return changes_of(events)


def _index_of(change: Change) -> int:
    return change.index
