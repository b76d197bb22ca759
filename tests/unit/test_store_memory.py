"""The Store contract and memory-specific behaviour for MemoryStore."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cove.clock import ManualClock
from cove.errors import InvalidArgument, StoreError, WatchCompacted
from cove.store import MemoryStore, open_store
from store_contract import Backend, StoreContract


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


class TestMemoryContract(StoreContract):
    @pytest.fixture
    def backend(self, clock: ManualClock) -> Iterator[Backend]:
        store = MemoryStore(clock)

        def pass_time(seconds: float) -> None:
            clock.advance(seconds)
            store.expire_leases()

        yield Backend(store, pass_time, "memory")
        store.close()


def test_history_is_bounded_and_old_watches_are_compacted(clock: ManualClock) -> None:
    store = MemoryStore(clock, history=100)
    first = store.put("a", b"0")
    slow = store.watch("a", first)
    for i in range(300):
        store.put("a", str(i).encode())
    with pytest.raises(WatchCompacted):
        slow.next(timeout=0)
    recent = store.watch("a", store.revision - 50)
    assert len(recent.next(timeout=0)) == 51
    store.close()


def test_compacting_the_future_is_refused(clock: ManualClock) -> None:
    store = MemoryStore(clock)
    with pytest.raises(InvalidArgument):
        store.compact(store.revision + 5)


def test_closed_store_refuses_and_wakes_watchers(clock: ManualClock) -> None:
    store = MemoryStore(clock)
    watch = store.watch("")
    store.close()
    with pytest.raises(StoreError):
        watch.next(timeout=1)
    with pytest.raises(StoreError):
        store.put("a", b"1")


def test_open_store_urls(clock: ManualClock) -> None:
    assert isinstance(open_store("memory:", clock), MemoryStore)
    for url in ["", "redis://x", "memory:/x/y", "sqlite:", "etcd://"]:
        with pytest.raises(InvalidArgument):
            open_store(url, clock)


def test_range_by_prefix_matches_a_plain_filter_whatever_the_characters() -> None:
    import random

    from cove.store import Get, Put

    rng = random.Random(7)
    alphabet = ["a", "b", "/", "\U0010ffff", "z", "\u00e9"]
    store = MemoryStore(ManualClock())
    keys = {"".join(rng.choices(alphabet, k=rng.randint(1, 5))) for _ in range(300)}
    for key in keys:
        store.put(key, b"v")
    for _ in range(500):
        prefix = "".join(rng.choices(alphabet, k=rng.randint(0, 3)))
        got = [kv.key for kv in store.range(prefix).kvs]
        assert got == sorted(k for k in keys if k.startswith(prefix)), prefix
        # Inside a transaction a range also sees the branch's own writes.
        extra = prefix + "\U0010ffff"
        res = store.txn((), [Put(extra, b"x"), Get(prefix, prefix=True)])
        keys.add(extra)
        seen = [kv.key for kv in res.responses[1]]
        assert seen == sorted(k for k in keys if k.startswith(prefix)), prefix
