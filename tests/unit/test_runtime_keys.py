"""Container keys by node, and moving records of the layout before them at
agent start-up, on the memory store (as a shared store, etcd's Store
protocol, and as a store of one host)."""

from __future__ import annotations

import json
from typing import Any

from cove.clock import ManualClock
from cove.runtime.keys import (
    container_key,
    containers_of,
    find_container,
    name_claim,
    name_key,
    status_key,
    statuses_of,
)
from cove.runtime.relayout import move_to_node_layout
from cove.store.memory import MemoryStore


class Shared:
    """A memory store that answers as a networked one would (no
    in-process abilities): records of other nodes are theirs."""

    def __init__(self, inner: MemoryStore) -> None:
        self._inner = inner

    def local(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _old(store: MemoryStore, name: str, node: str) -> str:
    cid = (name * 64)[:64]
    record = {"name": name, "id": cid, "node": node}
    store.put(f"containers/{name}", json.dumps(record).encode())
    store.put(f"cluster/status/{cid}", json.dumps({"id": cid, "node": node or "h1"}).encode())
    return cid


def test_the_keys() -> None:
    assert container_key("h1", "web") == "containers/h1/web"
    assert containers_of("h1") == "containers/h1/"
    assert container_key("h1", "web").startswith(containers_of("h1"))
    assert not container_key("h10", "web").startswith(containers_of("h1"))
    assert status_key("h1", "abc") == "cluster/status/h1/abc"
    assert status_key("h1", "abc").startswith(statuses_of("h1"))
    assert name_key("web") == "cluster/names/web"
    assert json.loads(name_claim("h1", "abc")) == {"node": "h1", "id": "abc"}


def test_find_container_follows_the_claim_or_finds_an_old_record() -> None:
    store = MemoryStore(ManualClock())
    store.put(container_key("h2", "web"), b'{"name": "web"}')
    store.put(name_key("web"), name_claim("h2", "x"))
    store.put("containers/old", b'{"name": "old"}')
    found = find_container(store, "web")
    assert found is not None and found.key == "containers/h2/web"
    old = find_container(store, "old")
    assert old is not None and old.key == "containers/old"
    assert find_container(store, "nope") is None
    assert find_container(store, "h2/web") is None  # a name has no slash


def test_on_a_shared_store_only_this_nodes_old_records_move_and_twice_is_once() -> None:
    inner = MemoryStore(ManualClock())
    store: Any = Shared(inner)
    mine = _old(inner, "mine", "h1")
    legacy = _old(inner, "legacy", "")  # single-host record: this node's
    theirs = _old(inner, "theirs", "h2")
    assert move_to_node_layout(store, "h1") == 4  # two containers, two states
    keys = [kv.key for kv in inner.range("").kvs]
    assert keys == sorted(
        [
            "cluster/layout/h1",  # every record of h1's moved
            "cluster/names/legacy",
            "cluster/names/mine",
            f"cluster/status/h1/{legacy}",
            f"cluster/status/h1/{mine}",
            f"cluster/status/{theirs}",  # h2's agent moves its own
            "containers/h1/legacy",
            "containers/h1/mine",
            "containers/theirs",
        ]
    )
    assert json.loads(inner.get(name_key("mine")).value) == {"node": "h1", "id": mine}  # type: ignore[union-attr]
    rev = inner.revision
    assert move_to_node_layout(store, "h1") == 0
    assert inner.revision == rev  # nothing written again
    # h2 starts: its records move too, and the two agents agree on every name.
    assert move_to_node_layout(store, "h2") == 2
    found = find_container(inner, "theirs")
    assert found is not None and found.key == "containers/h2/theirs"


def test_a_name_claimed_by_another_container_is_not_taken_over() -> None:
    inner = MemoryStore(ManualClock())
    store: Any = Shared(inner)
    _old(inner, "web", "h1")
    inner.put(container_key("h2", "web"), b'{"name": "web"}')
    inner.put(name_key("web"), name_claim("h2", "other"))
    move_to_node_layout(store, "h1")
    assert inner.get("containers/web") is not None  # left, and logged
    assert json.loads(inner.get(name_key("web")).value)["node"] == "h2"  # type: ignore[union-attr]


def test_on_a_store_of_its_own_a_renamed_host_takes_every_record() -> None:
    store = MemoryStore(ManualClock())
    cid = ("a" * 64)[:64]
    store.put(container_key("oldname", "web"), json.dumps({"name": "web", "id": cid}).encode())
    store.put(name_key("web"), name_claim("oldname", cid))
    store.put(status_key("oldname", cid), json.dumps({"id": cid, "node": "oldname"}).encode())
    _old(store, "legacy", "oldname")
    assert move_to_node_layout(store, "new") == 2
    assert [kv.key for kv in store.range("containers/").kvs] == [
        "containers/new/legacy",
        "containers/new/web",
    ]
    assert json.loads(store.get(name_key("web")).value)["node"] == "new"  # type: ignore[union-attr]
    # States published under the former name are dropped (published again).
    assert list(store.range("cluster/status/").kvs) == []
