"""A hub that watches only part of the keyspace (``cove.store.scope``):
another node's containers never reach it, one transaction's parts from
several streams arrive together in revision order, and a pass can wait for
the agent's own writes without reading the store."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import test_store_hub
from test_store_hub import Recorder

from cove.clock import ManualClock
from cove.errors import InvalidArgument, WatchCompacted
from cove.store import Compare, Delete, Event, MemoryStore, Put
from cove.store.base import UNBOUNDED
from cove.store.hub import WatchHub
from cove.store.scope import KeyRange, watched_ranges, written_keys

EXCLUDE = ("containers/", "cluster/status/")
MINE = ("containers/h1/", "cluster/status/h1/")
CACHED = ("networks/", "containers/h1/", "endpoints/")


store = test_store_hub.store  # the fixture: a fresh memory store


@pytest.fixture
def hub(store: MemoryStore) -> Iterator[WatchHub]:
    h = WatchHub(store, poll=0.05, listen=False, cache=CACHED, ranges=watched_ranges(EXCLUDE, MINE))
    yield h
    h.stop()


def test_the_ranges_are_the_keyspace_without_the_excluded_plus_mine() -> None:
    ranges = watched_ranges(EXCLUDE, MINE)
    assert ranges == [
        KeyRange("", "cluster/status/"),
        KeyRange("cluster/status0", "containers/"),
        KeyRange("containers0", UNBOUNDED),
        KeyRange("cluster/status/h1/", "cluster/status/h10"),
        KeyRange("containers/h1/", "containers/h10"),
    ]
    for key in ["acl/x", "cluster/nodes/h2", "cni/a", "endpoints/n/1", "registry/svc/x"]:
        assert sum(key in r for r in ranges) == 1, key
    for key in ["containers/h2/web", "cluster/status/h2/c1", "containers/h10/x"]:
        assert not any(key in r for r in ranges), key
    assert sum("containers/h1/web" in r for r in ranges) == 1


def test_bad_ranges_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="overlap"):
        watched_ranges(("a/", "a/b/"), ())
    with pytest.raises(InvalidArgument, match="excluded one"):
        watched_ranges(("a/",), ("b/x/",))
    with pytest.raises(InvalidArgument, match="whole keyspace"):
        watched_ranges(("",), ())


def test_a_cached_prefix_must_be_watched_whole(store: MemoryStore) -> None:
    with pytest.raises(InvalidArgument, match="not watched whole"):
        WatchHub(store, listen=False, cache=("containers/",), ranges=watched_ranges(EXCLUDE, MINE))


def test_another_nodes_containers_never_reach_the_hub(store: MemoryStore, hub: WatchHub) -> None:
    store.put("containers/h2/old", b"before start")
    store.put("containers/h1/old", b"mine, before start")
    hub.start()
    everything, containers = Recorder(), Recorder()
    hub.subscribe("", everything)
    hub.subscribe("containers/", containers)
    store.put("containers/h2/web", b"theirs")
    r2 = store.put("containers/h1/api", b"mine")
    store.put("cluster/status/h2/c9", b"theirs")
    last = store.put("networks/last", b"shared, written after them")
    eventually(lambda: ("put", "networks/last", last) in everything.events)
    assert containers.events == [("put", "containers/h1/api", r2)]
    keys = [key for _, key, _ in everything.events]
    assert "containers/h2/web" not in keys and "cluster/status/h2/c9" not in keys
    # The cache holds this node's containers only (read at start, then followed).
    cached = hub.reads.range("containers/h1/")
    assert [kv.key for kv in cached.kvs] == ["containers/h1/api", "containers/h1/old"]


def test_one_transaction_across_streams_arrives_as_one_batch_in_order(
    store: MemoryStore,
) -> None:
    # A window far wider than the default, so that a loaded test machine
    # cannot split a transaction's parts: what is tested is the gathering.
    hub = WatchHub(store, poll=0.05, listen=False, ranges=watched_ranges(EXCLUDE, MINE), window=0.5)
    hub.start()
    everything = Recorder()
    hub.subscribe("", everything)
    for i in range(20):
        store.txn(
            [],
            [
                Put(f"cluster/names/c{i}", b"claim"),
                Put(f"containers/h1/c{i}", b"record"),
                Put(f"cluster/status/h1/c{i}", b"state"),
            ],
        )
    last = store.put("networks/done", b"x")
    eventually(lambda: any(key == "networks/done" for _, key, _ in everything.events))
    revisions = [rev for _, _, rev in everything.events]
    assert revisions == sorted(revisions)
    assert revisions[-1] == last
    # Every transaction's three parts were delivered in one call.
    for batch in everything.batches:
        by_rev: dict[int, int] = {}
        for _, _, rev in batch:
            by_rev[rev] = by_rev.get(rev, 0) + 1
        assert all(n == 3 for r, n in by_rev.items() if r != last)
    hub.stop()


def test_a_pass_waits_for_its_own_writes_without_reading_the_store(
    store: MemoryStore, hub: WatchHub
) -> None:
    hub.start()
    # A write through the hub's store (the agent's) is one to wait for;
    # another node's write in a range this hub does not watch is not.
    store.put("containers/h2/theirs", b"x")
    rev = hub.writes.put("containers/h1/web", b"mine")
    reads = hub.reads.caught_up(5.0)
    assert reads is hub.reads
    assert reads.get("containers/h1/web") is not None
    assert hub.wait_for(rev, timeout=5)
    assert hub.wait_for(sys.maxsize, timeout=5)
    assert hub.revision >= rev


def test_only_sure_writes_are_waited_for() -> None:
    present = [Compare.mod_is("a", 7), Compare.present("b")]
    ops = [Put("p", b"1"), Delete("a"), Delete("b"), Delete("c"), Delete("d/", prefix=True)]
    assert written_keys(present, ops) == ["p", "a", "b"]
    assert written_keys([Compare.absent("c")], [Delete("c")]) == []


class _LostHistory:
    """A watch whose history is gone (as etcd's after a compaction)."""

    def next(self, timeout: float | None = None) -> list[Event]:
        raise WatchCompacted("compacted")

    def close(self) -> None:
        pass


class _ForgetfulStore(MemoryStore):
    """A memory store whose first watch of ``containers/h1/`` after
    ``forget`` is set has lost its history: what the hub then does is the
    logic under test."""

    def __init__(self) -> None:
        super().__init__(ManualClock())
        self.forget = threading.Event()
        self.forgotten = 0

    def watch(  # type: ignore[override]
        self,
        prefix: str,
        start_revision: int | None = None,
        *,
        prev: bool = True,
        end: str | None = None,
    ) -> object:
        if prefix == "containers/h1/" and self.forget.is_set() and not self.forgotten:
            self.forgotten += 1
            return _LostHistory()
        return super().watch(prefix, start_revision, prev=prev, end=end)


def test_a_compacted_stream_resyncs_its_range_only() -> None:
    store = _ForgetfulStore()
    hub = WatchHub(
        store, poll=0.05, listen=False, cache=CACHED, ranges=watched_ranges(EXCLUDE, MINE)
    )
    try:
        store.put("containers/h1/gone", b"1")
        store.put("containers/h1/kept", b"1")
        hub.start()
        seen = Recorder()
        hub.subscribe("", seen)
        # The stream breaks, and while it is away its keys change.
        with hub._lock:
            stream = next(s for s in hub._streams if s.range.start == "containers/h1/")
            watch = stream.watch
        store.forget.set()
        assert watch is not None
        store.delete("containers/h1/gone")
        new = store.put("containers/h1/new", b"2")
        watch.close()  # the pump's next read fails; it watches again, finds no history
        eventually(lambda: store.forgotten == 1)
        eventually(lambda: any(key == "containers/h1/gone" for _, key, _ in seen.events))
        kinds = {key: kind for kind, key, _ in seen.events}
        assert kinds["containers/h1/gone"] == "delete"
        assert ("put", "containers/h1/new", new) in seen.events
        assert "containers/h1/kept" not in kinds  # unchanged: not delivered again
        cached = {kv.key for kv in hub.reads.range("containers/h1/").kvs}
        assert cached == {"containers/h1/kept", "containers/h1/new"}
        # Other streams were not re-read: they go on as before.
        last = store.put("networks/after", b"x")
        eventually(lambda: ("put", "networks/after", last) in seen.events)
    finally:
        hub.stop()
        store.close()


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_the_parts_of_the_agents_own_write_arrive_together(store: MemoryStore) -> None:
    # With no window to speak of, the hub still waits for every stream
    # that carries a part of a write of this agent's (it knows which).
    hub = WatchHub(store, poll=0.05, listen=False, ranges=watched_ranges(EXCLUDE, MINE), window=0)
    hub.start()
    try:
        everything = Recorder()
        hub.subscribe("", everything)
        revisions = []
        for i in range(20):
            revisions.append(
                hub.writes.txn(
                    [],
                    [
                        Put(f"cluster/names/c{i}", b"claim"),
                        Put(f"containers/h1/c{i}", b"record"),
                        Put(f"cluster/status/h1/c{i}", b"state"),
                    ],
                ).revision
            )
            assert hub.wait_for(revisions[-1], timeout=5)
        for batch in everything.batches:
            assert len(batch) == 3 and len({rev for _, _, rev in batch}) == 1, batch
        assert sorted({rev for _, _, rev in everything.events}) == revisions
    finally:
        hub.stop()
