"""Which networks an agent on etcd follows (``cove.agent.following``): the
ones its node has endpoints on, all of an overlay network, its own part of
a bridge network, and none once it has left them for the grace period."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from test_store_scope import eventually

from cove.agent.daemon import FOLLOWED_IN_PARTS, cached_prefixes, watched_ranges
from cove.agent.following import NetworkFollowing
from cove.clock import ManualClock
from cove.store import MemoryStore
from cove.store.hub import WatchHub


class Now:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    s = MemoryStore(ManualClock())
    s.put("networks/ov", json.dumps({"name": "ov", "driver": "overlay"}).encode())
    s.put("networks/br", json.dumps({"name": "br", "driver": "bridge"}).encode())
    s.put("networks/idle", json.dumps({"name": "idle", "driver": "overlay"}).encode())
    s.put("endpoints/ov/h2/a", b"{}")
    s.put("endpoints/br/h2/b", b"{}")
    s.put("endpoints/idle/h2/c", b"{}")
    yield s
    s.close()


@pytest.fixture
def hub(store: MemoryStore) -> Iterator[WatchHub]:
    h = WatchHub(
        store,
        poll=0.05,
        listen=False,
        cache=cached_prefixes("h1"),
        partial=FOLLOWED_IN_PARTS,
        ranges=watched_ranges("h1"),
    )
    h.start()
    yield h
    h.stop()


def _endpoints(hub: WatchHub) -> list[str]:
    return [kv.key for kv in hub.reads.range("endpoints/").kvs]


def test_start_follows_the_networks_this_node_is_on(store: MemoryStore, hub: WatchHub) -> None:
    store.put("endpoints/ov/h1/mine", b"{}")
    store.put("endpoints/br/h1/mine", b"{}")
    following = NetworkFollowing(hub, "h1")
    following.start()
    try:
        assert hub.followed == ("endpoints/br/h1/", "endpoints/ov/", "ipam/br/", "ipam/ov/")
        eventually(lambda: len(_endpoints(hub)) == 3)
        # Every host's endpoints of the overlay, this node's of the bridge,
        # nothing of the network this node is not on.
        assert _endpoints(hub) == [
            "endpoints/br/h1/mine",
            "endpoints/ov/h1/mine",
            "endpoints/ov/h2/a",
        ]
    finally:
        following.stop()


def test_a_network_is_followed_from_the_first_write_and_left_after_the_grace(
    store: MemoryStore, hub: WatchHub
) -> None:
    now = Now()
    following = NetworkFollowing(hub, "h1", grace=30.0, clock=now)
    following.start()
    try:
        assert hub.followed == ()
        hub.writes.put("ipam/ov/10.0.0.5", b"mine")  # IPAM first, as a run does
        assert hub.followed == ("endpoints/ov/", "ipam/ov/")
        hub.writes.put("endpoints/ov/h1/mine", b"{}")
        assert hub.reads.caught_up(5.0) is hub.reads
        assert _endpoints(hub) == ["endpoints/ov/h1/mine", "endpoints/ov/h2/a"]
        # Still on it: a pass long after keeps it.
        now.t += 100
        following._pass(False)
        assert hub.followed == ("endpoints/ov/", "ipam/ov/")
        # Off it: kept for the grace period, then left.
        hub.writes.delete("endpoints/ov/h1/mine")
        eventually(lambda: "endpoints/ov/h1/mine" not in _endpoints(hub))
        now.t += 10
        following._pass(False)
        assert hub.followed == ("endpoints/ov/", "ipam/ov/")
        now.t += 31
        following._pass(False)
        assert hub.followed == ()
        eventually(lambda: _endpoints(hub) == [])
    finally:
        following.stop()


def test_a_driver_change_follows_the_right_part(store: MemoryStore, hub: WatchHub) -> None:
    store.put("endpoints/br/h1/mine", b"{}")
    following = NetworkFollowing(hub, "h1")
    following.start()
    try:
        assert "endpoints/br/h1/" in hub.followed
        store.put("networks/br", json.dumps({"name": "br", "driver": "overlay"}).encode())
        eventually(lambda: hub.reads.get("networks/br") is not None
                    and b"overlay" in hub.reads.get("networks/br").value)  # type: ignore[union-attr]  # fmt: skip
        following._pass(True)
        assert hub.followed == ("endpoints/br/", "ipam/br/")
        eventually(lambda: "endpoints/br/h2/b" in _endpoints(hub))
    finally:
        following.stop()


def test_an_agent_watches_its_own_node_records_and_the_shared_ones() -> None:
    ranges = watched_ranges("h1")
    mine = [
        "containers/h1/web",
        "cluster/status/h1/c1",
        "registry/agent/h1/svc/web",
        "registry/svc/web/h2/web",  # the catalog: every agent serves it
        "registry/chk/web/h2/c",
        "cluster/nodes/h2",
        "networks/ov",
        "ipamblocks/ov/10.0.0.0",
        "cni/h2/podman1/eth0",  # few and small: not worth a stream of their own
    ]
    theirs = [
        "containers/h2/web",
        "cluster/status/h2/c1",
        "registry/agent/h2/svc/web",
        "registry/agent/h10/svc/web",
        "cluster/names/web",  # claims: only a create reads them, from the store
        "endpoints/ov/h2/e",  # followed per network (agent/following.py)
        "ipam/ov/10.0.0.9",
    ]
    for key in mine:
        assert sum(key in r for r in ranges) == 1, key
    for key in theirs:
        assert not any(key in r for r in ranges), key
    assert len(ranges) == 10  # 7 gaps between what is left out, 3 of this node's
