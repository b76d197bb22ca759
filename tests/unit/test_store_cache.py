"""StoreCache and the hub that keeps it: what passes read instead of the store."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import pytest

from cove.clock import ManualClock
from cove.errors import InvalidArgument
from cove.store import Event, EventType, KeyValue, MemoryStore, Put
from cove.store.base import RangeResult
from cove.store.cache import CachedReads, StoreCache
from cove.store.hub import WatchHub

PREFIXES = ("containers/", "endpoints/")


def kv(key: str, value: bytes, rev: int, created: int = 0) -> KeyValue:
    return KeyValue(key, value, created or rev, rev, 1)


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    s = MemoryStore(ManualClock(), history=50)
    yield s
    s.close()


def pairs(result: Sequence[KeyValue]) -> list[tuple[str, bytes]]:
    return [(k.key, k.value) for k in result]


def test_overlapping_or_empty_prefixes_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="overlap"):
        StoreCache(("registry/", "registry/svc/"))
    with pytest.raises(InvalidArgument, match="empty"):
        StoreCache(("",))


def test_range_of_a_prefix_and_of_a_part_of_it_sorted() -> None:
    cache = StoreCache(PREFIXES)
    cache.load(
        [kv("endpoints/n2/b", b"2", 3), kv("endpoints/n1/a", b"1", 2), kv("other/x", b"", 4)], 4
    )
    assert pairs(cache.range("endpoints/").kvs) == [
        ("endpoints/n1/a", b"1"),
        ("endpoints/n2/b", b"2"),
    ]
    assert pairs(cache.range("endpoints/n2/").kvs) == [("endpoints/n2/b", b"2")]
    assert cache.range("endpoints/n3/").kvs == ()
    assert cache.get("other/x") is None  # not a cached prefix: not kept
    assert cache.range("endpoints/").revision == 4


def test_apply_fills_prev_and_ignores_what_the_fill_already_had() -> None:
    cache = StoreCache(PREFIXES)
    cache.load([kv("containers/a", b"v1", 5)], 5)
    events = [
        Event(EventType.PUT, kv("containers/a", b"v0", 4)),  # older than the fill: no effect
        Event(EventType.PUT, kv("containers/a", b"v2", 6, created=5)),
        Event(EventType.PUT, kv("policy/r", b"x", 7)),  # not cached: passed through
        Event(EventType.DELETE, KeyValue("containers/a", b"", 0, 8, 0)),
    ]
    out = cache.apply(events, 8)
    assert out[0].prev is None
    assert out[1].prev is not None and out[1].prev.value == b"v1"
    assert out[2] is events[2]
    assert out[3].prev is not None and out[3].prev.value == b"v2"
    assert cache.get("containers/a") is None
    assert cache.revision == 8


@pytest.mark.parametrize("listen", [False, True], ids=["watching", "listening"])
def test_hub_keeps_the_cache_current_before_subscribers_hear(
    store: MemoryStore, listen: bool
) -> None:
    store.put("containers/old", b"o")
    hub = WatchHub(store, poll=0.05, listen=listen, cache=PREFIXES)
    seen: list[list[tuple[str, bytes]]] = []
    prevs: list[bytes | None] = []

    def on_events(events: Sequence[Event]) -> None:
        # What a pass kicked by these events would read.
        seen.append(pairs(hub.reads.range("containers/").kvs))
        prevs.extend(e.prev.value if e.prev else None for e in events)

    hub.subscribe("containers/", on_events)
    hub.start()
    try:
        r1 = store.put("containers/a", b"1")
        r2 = store.txn([], [Put("containers/a", b"2"), Put("ipam/x", b"i")]).revision
        r3 = store.delete("containers/old")
        assert hub.wait_for(r3, timeout=5)
        assert seen[-1] == [("containers/a", b"2")]
        assert prevs == [None, b"1", b"o"]
        assert hub.reads.revision == r3 and r1 < r2 < r3
        assert pairs(hub.reads.range("containers/").kvs) == pairs(store.range("containers/").kvs)
        # Uncached prefixes are read from the store.
        assert pairs(hub.reads.range("ipam/").kvs) == [("ipam/x", b"i")]
        keys = hub.reads.keys("containers/").kvs
        assert [(k.key, k.value) for k in keys] == [("containers/a", b"")]
    finally:
        hub.stop()


def test_cache_is_rebuilt_after_a_resync(monkeypatch: pytest.MonkeyPatch) -> None:
    # The hub falls behind the store's history: it re-reads everything and
    # the cache is loaded from that read, deletes included.
    store = MemoryStore(ManualClock(), history=20)
    store.put("containers/gone", b"x")
    gate, entered = threading.Event(), threading.Event()

    def slow(_events: Sequence[Event]) -> None:
        entered.set()
        gate.wait(10)

    hub = WatchHub(store, poll=0.05, listen=False, cache=PREFIXES)
    hub.start()
    hub.subscribe("", slow)
    try:
        store.put("first", b"1")
        assert entered.wait(5)
        store.delete("containers/gone")
        store.put("containers/new", b"n")
        last = 0
        for i in range(60):
            last = store.put("noise", str(i).encode())
        gate.set()
        assert hub.wait_for(last, timeout=10)
        assert pairs(hub.reads.range("containers/").kvs) == [("containers/new", b"n")]
        assert hub.reads.revision == last
    finally:
        hub.stop()
        store.close()


def test_caught_up_waits_for_the_watch_or_falls_back_to_the_store(store: MemoryStore) -> None:
    cache = StoreCache(PREFIXES)
    reads = CachedReads(store, cache)
    # Not loaded yet: everything from the store.
    store.put("containers/a", b"1")
    assert pairs(reads.range("containers/").kvs) == [("containers/a", b"1")]
    assert reads.caught_up(0.05) is store
    cache.fill(store)
    assert reads.caught_up(0.05) is reads
    store.put("containers/b", b"2")  # the cache is not told: it lags
    assert reads.caught_up(0.05) is store
    threading.Timer(
        0.1, lambda: cache.apply(store.watch("", store.revision).next(1), store.revision)
    ).start()
    assert reads.caught_up(5) is reads
    assert pairs(reads.range("containers/").kvs) == [("containers/a", b"1"), ("containers/b", b"2")]


def test_without_a_cache_every_read_is_the_stores(store: MemoryStore) -> None:
    hub = WatchHub(store, poll=0.05)
    store.put("containers/a", b"1")
    assert hub.reads.caught_up(0.01) is store
    assert pairs(hub.reads.range("containers/").kvs) == [("containers/a", b"1")]


class ReadAt:
    """A store whose prefixes were each read at a revision of their own (a
    fill takes one read per prefix while writes go on)."""

    def __init__(self, answers: dict[str, tuple[list[KeyValue], int]]) -> None:
        self.answers = answers

    def range(self, prefix: str) -> RangeResult:
        kvs, rev = self.answers[prefix]
        return RangeResult(tuple(kvs), rev)


def test_a_fill_read_at_several_revisions_replays_no_deleted_key() -> None:
    # endpoints/ read at 3, containers/ at 5; containers/x was put at 4 and
    # deleted at 5, endpoints/e put at 4: the watch replays 4 and 5.
    cache = StoreCache(PREFIXES)
    store = ReadAt({"containers/": ([], 5), "endpoints/": ([], 3)})
    assert cache.fill(store) == 3
    assert cache.revision == 3
    cache.apply(
        [
            Event(EventType.PUT, kv("containers/x", b"1", 4)),
            Event(EventType.PUT, kv("endpoints/e", b"e", 4)),
        ],
        4,
    )
    # No phantom containers/x (its prefix's read was newer), endpoints/e in.
    assert cache.get("containers/x") is None
    assert pairs(cache.range("endpoints/").kvs) == [("endpoints/e", b"e")]
    cache.apply([Event(EventType.DELETE, KeyValue("containers/x", b"", 0, 5, 0))], 5)
    assert cache.get("containers/x") is None and cache.revision == 5
