"""A hub that follows parts of a prefix (``WatchHub.follow``): an agent
hears the endpoints of the networks it has containers on, no others, and
what it writes itself is in its view before the write returns."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
import test_store_hub
from test_store_hub import Recorder
from test_store_scope import eventually

from cove.clock import ManualClock
from cove.errors import InvalidArgument
from cove.store import MemoryStore
from cove.store.cache import StoreCache
from cove.store.hub import WatchHub
from cove.store.scope import watched_ranges

EXCLUDE = ("containers/", "cluster/status/", "endpoints/", "ipam/")
MINE = ("containers/h1/", "cluster/status/h1/")
CACHED = ("networks/", "containers/h1/")
PARTIAL = ("endpoints/", "ipam/")


store = test_store_hub.store  # the fixture: a fresh memory store


@pytest.fixture
def hub(store: MemoryStore) -> Iterator[WatchHub]:
    h = WatchHub(
        store,
        poll=0.05,
        listen=False,
        cache=CACHED,
        partial=PARTIAL,
        ranges=watched_ranges(EXCLUDE, MINE),
    )
    yield h
    h.stop()


def _keys(hub: WatchHub, prefix: str) -> list[str]:
    return [kv.key for kv in hub.reads.range(prefix).kvs]


def test_nothing_under_a_partial_prefix_arrives_until_followed(
    store: MemoryStore, hub: WatchHub
) -> None:
    store.put("endpoints/a/h2/x", b"before")
    hub.start()
    seen = Recorder()
    hub.subscribe("", seen)
    store.put("endpoints/b/h2/y", b"not followed")
    last = store.put("networks/n", b"x")
    eventually(lambda: ("put", "networks/n", last) in seen.events)
    assert [k for _, k, _ in seen.events] == ["networks/n"]
    assert _keys(hub, "endpoints/") == []  # the view: nothing followed
    # A read of a part not followed goes to the store.
    assert _keys(hub, "endpoints/a/") == ["endpoints/a/h2/x"]


def test_following_a_part_replays_it_then_follows_it(store: MemoryStore, hub: WatchHub) -> None:
    r1 = store.put("endpoints/a/h2/x", b"1")
    store.put("endpoints/b/h2/y", b"other network")
    hub.start()
    seen, log = Recorder(), Recorder()
    hub.subscribe("endpoints/", seen)
    hub.subscribe("", log, replays=False)
    hub.follow(["endpoints/a/"])
    eventually(lambda: ("put", "endpoints/a/h2/x", r1) in seen.events)
    assert hub.followed == ("endpoints/a/",)
    r2 = store.put("endpoints/a/h3/z", b"2")
    store.put("endpoints/b/h3/w", b"other network")
    eventually(lambda: ("put", "endpoints/a/h3/z", r2) in seen.events)
    assert _keys(hub, "endpoints/") == ["endpoints/a/h2/x", "endpoints/a/h3/z"]
    assert all("endpoints/b/" not in k for _, k, _ in seen.events)
    # The replay is not a change: the event log never heard of x.
    assert ("put", "endpoints/a/h2/x", r1) not in log.events
    assert ("put", "endpoints/a/h3/z", r2) in log.events


def test_unfollowing_drops_the_part_as_deletes(store: MemoryStore, hub: WatchHub) -> None:
    store.put("endpoints/a/h2/x", b"1")
    hub.start()
    seen, log = Recorder(), Recorder()
    hub.subscribe("endpoints/", seen)
    hub.subscribe("", log, replays=False)
    hub.follow(["endpoints/a/"])
    eventually(lambda: _keys(hub, "endpoints/") == ["endpoints/a/h2/x"])
    hub.unfollow(["endpoints/a/"])
    eventually(lambda: ("delete", "endpoints/a/h2/x") in [(t, k) for t, k, _ in seen.events])
    assert hub.followed == ()
    assert _keys(hub, "endpoints/") == []
    store.put("endpoints/a/h2/later", b"2")
    last = store.put("networks/n", b"x")
    eventually(lambda: ("put", "networks/n", last) in log.events)
    assert all(k != "endpoints/a/h2/later" for _, k, _ in seen.events)
    assert not any(t == "delete" for t, _, _ in log.events)
    # Followed again: what it holds now is replayed.
    hub.follow(["endpoints/a/"])
    eventually(lambda: "endpoints/a/h2/later" in _keys(hub, "endpoints/"))


def test_an_own_write_is_followed_before_it_returns(store: MemoryStore, hub: WatchHub) -> None:
    asked: list[str] = []

    def widen(key: str) -> Sequence[str]:
        asked.append(key)
        network = key.split("/")[1]
        return (f"endpoints/{network}/", f"ipam/{network}/")

    hub.widen = widen
    store.put("endpoints/ov/h2/theirs", b"already there")
    hub.start()
    rev = hub.writes.put("ipam/ov/10.0.0.2", b"mine")
    assert hub.followed == ("endpoints/ov/", "ipam/ov/")
    reads = hub.reads.caught_up(5.0)
    assert reads is hub.reads
    assert _keys(hub, "ipam/") == ["ipam/ov/10.0.0.2"]
    assert _keys(hub, "endpoints/") == ["endpoints/ov/h2/theirs"]
    assert hub.wait_for(rev, timeout=5)
    # A key already followed asks nothing more.
    hub.writes.put("endpoints/ov/h1/mine", b"x")
    assert asked == ["ipam/ov/10.0.0.2"]
    assert hub.reads.caught_up(5.0) is hub.reads
    assert "endpoints/ov/h1/mine" in _keys(hub, "endpoints/")


def test_a_wider_part_replaces_a_narrower_one(store: MemoryStore, hub: WatchHub) -> None:
    store.put("endpoints/n/h1/mine", b"1")
    store.put("endpoints/n/h2/theirs", b"2")
    hub.start()
    hub.follow(["endpoints/n/h1/"])
    eventually(lambda: _keys(hub, "endpoints/") == ["endpoints/n/h1/mine"])
    # A read of the network answers with the view: this node's part.
    assert _keys(hub, "endpoints/n/") == ["endpoints/n/h1/mine"]
    hub.follow(["endpoints/n/"])  # the network became an overlay
    eventually(lambda: len(_keys(hub, "endpoints/")) == 2)
    assert hub.followed == ("endpoints/n/",)


def test_only_parts_of_partial_prefixes_are_followed(store: MemoryStore, hub: WatchHub) -> None:
    with pytest.raises(InvalidArgument, match="once it has started"):
        hub.follow(["endpoints/a/"])
    hub.start()
    for bad in ("networks/x/", "endpoints/", "cni/a/"):
        with pytest.raises(InvalidArgument, match="partial"):
            hub.follow([bad])
    with pytest.raises(InvalidArgument, match="partial prefix is watched"):
        WatchHub(store, listen=False, partial=("networks/",), ranges=watched_ranges(EXCLUDE, MINE))


def test_a_listening_hub_holds_partial_prefixes_whole(store: MemoryStore) -> None:
    store.put("endpoints/a/h2/x", b"1")
    hub = WatchHub(store, cache=CACHED, partial=PARTIAL)
    try:
        hub.start()
        assert _keys(hub, "endpoints/") == ["endpoints/a/h2/x"]
        hub.follow(["endpoints/b/"])  # nothing to do: it hears every commit
        assert hub.followed == ()
    finally:
        hub.stop()


def test_the_cache_answers_for_followed_parts_only() -> None:
    cache = StoreCache(("networks/",), partial=("endpoints/",))
    store = MemoryStore(ManualClock())
    try:
        cache.fill(store)
        assert cache.covers("networks/x")
        assert cache.covers("endpoints/")  # the view: what is followed
        assert not cache.covers("endpoints/a/")
        assert not cache.covers("endpoints/a/h1/x")
        with pytest.raises(InvalidArgument, match="not a part"):
            cache.follow("networks/a/", [], 1)
        cache.follow("endpoints/a/h1/", [], 3)
        assert cache.covers("endpoints/a/h1/x")
        assert cache.covers("endpoints/a/")  # holds a followed part
        assert not cache.covers("endpoints/a/h2/")
        assert not cache.covers("endpoints/b/")
        with pytest.raises(InvalidArgument, match="overlap"):
            cache.follow("endpoints/a/", [], 4)
        assert cache.unfollow("endpoints/a/h1/") == []
        assert not cache.covers("endpoints/a/")
    finally:
        store.close()
