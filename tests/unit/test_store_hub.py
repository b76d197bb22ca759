"""WatchHub: one store watch fanned out to prefix subscribers."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import pytest

from cove.clock import ManualClock
from cove.errors import StoreError
from cove.store import Delete, Event, EventType, KeyValue, MemoryStore, Put
from cove.store.hub import WatchHub
from cove.store.memory import Snapshot


class Recorder:
    """A subscriber that keeps every batch (read from the test's thread
    while the hub's appends)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, str, int]]] = []
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, events: Sequence[Event]) -> None:
        with self.lock:
            self.threads.add(threading.current_thread().name)
            self.batches.append([(e.type.value, e.kv.key, e.revision) for e in events])

    @property
    def events(self) -> list[tuple[str, str, int]]:
        with self.lock:
            return [e for batch in self.batches for e in batch]


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    s = MemoryStore(ManualClock())
    yield s
    s.close()


@pytest.fixture
def hub(store: MemoryStore) -> Iterator[WatchHub]:
    h = WatchHub(store, poll=0.05)
    yield h
    h.stop()


def test_subscribers_get_only_their_prefix_in_order(store: MemoryStore, hub: WatchHub) -> None:
    store.put("networks/old", b"before start: not delivered")
    hub.start()
    nets, eps, everything = Recorder(), Recorder(), Recorder()
    hub.subscribe("networks/", nets)
    hub.subscribe("endpoints/", eps)
    hub.subscribe("", everything)
    r1 = store.put("networks/a", b"1")
    r2 = store.txn([], [Put("endpoints/a/1", b"e"), Put("networks/b", b"2")]).revision
    r3 = store.delete("networks/a")
    assert hub.wait_for(r3, timeout=5)
    assert hub.revision == r3
    assert nets.events == [
        ("put", "networks/a", r1),
        ("put", "networks/b", r2),
        ("delete", "networks/a", r3),
    ]
    assert eps.events == [("put", "endpoints/a/1", r2)]
    assert len(everything.events) == 4
    assert nets.threads == {"cove-watch-hub"}


def test_cancelled_subscription_gets_nothing_more(store: MemoryStore, hub: WatchHub) -> None:
    hub.start()
    rec = Recorder()
    sub = hub.subscribe("k/", rec)
    assert hub.wait_for(store.put("k/1", b"1"), timeout=5)
    sub.cancel()
    assert hub.wait_for(store.put("k/2", b"2"), timeout=5)
    assert [key for _, key, _ in rec.events] == ["k/1"]


def test_failing_callback_does_not_hurt_others(store: MemoryStore, hub: WatchHub) -> None:
    hub.start()

    def broken(events: Sequence[Event]) -> None:
        raise RuntimeError("subscriber bug")

    rec = Recorder()
    hub.subscribe("k/", broken)
    hub.subscribe("k/", rec)
    assert hub.wait_for(store.put("k/1", b"1"), timeout=5)
    assert hub.wait_for(store.put("k/2", b"2"), timeout=5)
    assert len(rec.events) == 2


def test_wait_for_times_out_on_a_future_revision(store: MemoryStore, hub: WatchHub) -> None:
    hub.start()
    assert hub.wait_for(store.revision, timeout=1)  # the start revision counts as delivered
    assert not hub.wait_for(store.revision + 1, timeout=0.1)


@pytest.mark.parametrize("listen", [False, True], ids=["watching", "listening"])
def test_a_stuck_subscriber_catches_up_with_each_keys_last_change(
    listen: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Watching: the history runs past the hub and it resyncs after the
    # compaction. Listening: the queued commits are merged per key.
    monkeypatch.setattr("cove.store.hub.MAX_QUEUED", 20)
    store = MemoryStore(ManualClock(), history=20)
    store.put("k/gone", b"x")
    store.put("k/same", b"x")
    store.put("k/changed", b"1")
    gate, entered = threading.Event(), threading.Event()
    rec = Recorder()

    def slow(events: Sequence[Event]) -> None:
        entered.set()
        gate.wait(10)  # hold the hub thread while history runs away
        rec(events)

    hub = WatchHub(store, poll=0.05, listen=listen)
    hub.start()
    hub.subscribe("k/", slow)
    first = store.put("k/first", b"1")
    assert entered.wait(5)
    for i in range(100):
        store.put("noise", str(i).encode())
    store.put("k/changed", b"2")
    store.delete("k/gone")
    for i in range(100):
        store.put("noise", str(i).encode())
    last = store.put("k/new", b"n")
    gate.set()
    assert hub.wait_for(last, timeout=10)
    hub.stop()
    store.close()
    assert rec.batches[0] == [("put", "k/first", first)]
    resync = {(kind, key) for kind, key, _ in rec.batches[1]}
    assert resync == {("put", "k/changed"), ("delete", "k/gone"), ("put", "k/new")}
    assert len(rec.batches) == 2 and len(rec.batches[1]) == 3


def test_events_under_load_arrive_once_in_order(store: MemoryStore, hub: WatchHub) -> None:
    hub.start()
    rec = Recorder()
    hub.subscribe("k/", rec)
    expected: list[tuple[str, str, int]] = []

    def writer(n: int) -> None:
        for i in range(200):
            rev = store.put(f"k/{n}/{i}", b"v")
            del_rev = store.txn([], [Delete(f"k/{n}/{i}")]).revision
            expected.extend([("put", f"k/{n}/{i}", rev), ("delete", f"k/{n}/{i}", del_rev)])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert hub.wait_for(store.revision, timeout=10)
    assert rec.events == sorted(expected, key=lambda e: e[2])
    assert all(kind in {EventType.PUT.value, EventType.DELETE.value} for kind, _, _ in rec.events)


def test_inline_subscribers_run_in_the_committing_thread_before_it_returns(
    store: MemoryStore, hub: WatchHub
) -> None:
    hub.start()
    inline, threaded = Recorder(), Recorder()
    hub.subscribe("svc/", inline, inline=True)
    hub.subscribe("svc/", threaded)
    rev = store.put("svc/a", b"1")
    # Already there when put() returns, and from this very thread.
    assert inline.events == [("put", "svc/a", rev)]
    assert inline.threads == {threading.current_thread().name}
    assert hub.wait_for(rev, timeout=5)
    assert threaded.events == [("put", "svc/a", rev)]
    assert threaded.threads == {"cove-watch-hub"}


def test_a_group_reaches_inline_subscribers_once_at_its_end(
    store: MemoryStore, hub: WatchHub
) -> None:
    hub.start()
    inline = Recorder()
    hub.subscribe("", inline, inline=True)
    with store.batch():
        r1 = store.put("a", b"1")
        r2 = store.put("b", b"2")
        assert inline.batches == []  # nothing before the group commits
    assert inline.batches == [[("put", "a", r1), ("put", "b", r2)]]


def test_revision_advances_when_no_thread_subscriber_wants_a_commit(
    store: MemoryStore, hub: WatchHub
) -> None:
    hub.start()
    threaded = Recorder()
    hub.subscribe("elsewhere/", threaded)
    rev = store.put("svc/a", b"1")
    assert hub.revision == rev  # nobody to wait for
    rev2 = store.put("elsewhere/x", b"1")
    assert hub.wait_for(rev2, timeout=5) and threaded.events == [("put", "elsewhere/x", rev2)]


class FailingGroups:
    """A journal whose group commits fail: the store goes back to what the
    journal kept, as SqliteStore's mirror re-reads its file when SQLite
    refuses a commit."""

    def __init__(self) -> None:
        self.kvs: dict[str, KeyValue] = {}
        self.history: list[Event] = []
        self.revision = 1
        self.group: list[tuple[int, Sequence[Event]]] | None = None

    def restore(self) -> Snapshot:
        return Snapshot(list(self.kvs.values()), list(self.history), self.revision)

    def events(self, revision: int, events: Sequence[Event]) -> None:
        if self.group is not None:
            self.group.append((revision, events))
            return
        for ev in events:
            if ev.type is EventType.PUT:
                self.kvs[ev.kv.key] = ev.kv
            else:
                self.kvs.pop(ev.kv.key, None)
        self.history.extend(events)
        self.revision = revision

    def compact(self, revision: int) -> None:
        pass

    def lease(self, lease: int, ttl: int, deadline: float) -> None:
        pass

    def lease_end(self, lease: int) -> None:
        pass

    def group_begin(self) -> None:
        self.group = []

    def group_end(self) -> None:
        self.group = None
        raise StoreError("disk full (simulated)")

    def close(self) -> None:
        pass


def test_a_failed_group_delivers_nothing_and_later_writes_still_arrive() -> None:
    store = MemoryStore(ManualClock(), journal=FailingGroups())
    hub = WatchHub(store, poll=0.05)
    try:
        hub.start()
        inline, threaded = Recorder(), Recorder()
        hub.subscribe("", inline, inline=True)
        hub.subscribe("", threaded)
        with pytest.raises(Exception, match="disk full"), store.batch():
            store.put("lost", b"1")
        assert store.get("lost") is None
        rev = store.put("kept", b"1")
        assert hub.wait_for(rev, timeout=5)
        assert inline.events == threaded.events == [("put", "kept", rev)]
    finally:
        hub.stop()
        store.close()
