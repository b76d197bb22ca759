"""Endpoint keys by node (``endpoints/<network>/<node>/<id>``), moving
endpoints of the layout before them at agent start-up, and the per-node
mark that spares later starts the scan of the cluster's keys; on the
memory store (as a shared store, etcd's Store protocol, and as a store of
one host) and on SQLite."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from test_runtime_keys import Shared as _Shared

from cove.clock import ManualClock
from cove.model import (
    Endpoint,
    endpoint_key,
    endpoints_in,
    endpoints_of,
    legacy_endpoint_key,
    parse_endpoint_key,
)
from cove.runtime.keys import container_key, layout_key, name_claim, name_key
from cove.runtime.relayout import move_to_node_layout
from cove.store.base import Compare, KeyValue, Op, RangeResult, TxnResult
from cove.store.memory import MemoryStore
from cove.store.sqlite import SqliteStore


class _Counting:
    """Every read, as (operation, key or prefix)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.reads: list[tuple[str, str]] = []

    def get(self, key: str) -> KeyValue | None:
        self.reads.append(("get", key))
        return self._inner.get(key)  # type: ignore[no-any-return]

    def range(self, prefix: str, *, end: str | None = None) -> RangeResult:
        self.reads.append(("range", prefix))
        return self._inner.range(prefix, end=end)  # type: ignore[no-any-return]

    def keys(self, prefix: str, *, end: str | None = None) -> RangeResult:
        self.reads.append(("keys", prefix))
        return self._inner.keys(prefix, end=end)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Crash(Exception):
    pass


class _Crashing(_Shared):
    """The agent dies (the store is left as it is) before its n-th transaction."""

    def __init__(self, inner: MemoryStore, after: int) -> None:
        super().__init__(inner)
        self._left = after

    def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        if self._left == 0:
            raise _Crash
        self._left -= 1
        return self._inner.txn(compares, success, failure)


def _put(store: Any, key: str, data: dict[str, Any]) -> None:
    store.put(key, json.dumps(data).encode())


def _container(store: Any, name: str, node: str, *, legacy: bool = True) -> str:
    cid = (name * 64)[:64]
    record = {"name": name, "id": cid, "node": node}
    if legacy:
        _put(store, f"containers/{name}", record)
    else:
        _put(store, container_key(node, name), record)
        store.put(name_key(name), name_claim(node, cid))
    return cid


def _endpoint(store: Any, key: str, cid: str, node: str) -> None:
    ep = Endpoint(
        id=key.rsplit("/", 1)[1], network=key.split("/")[1], container_id=cid,
        container_name="x", interface="eth0", host_veth="cvx", mac="02:42:0a:00:00:02",
        node=node,
    )  # fmt: skip
    _put(store, key, ep.to_json())


def _endpoints(store: Any) -> dict[str, str]:
    """Every endpoint key, and the node its record names."""
    return {kv.key: json.loads(kv.value)["node"] for kv in store.range("endpoints/").kvs}


def test_the_endpoint_keys() -> None:
    assert endpoint_key("vnet", "h1", "e1") == "endpoints/vnet/h1/e1"
    assert endpoints_of("vnet", "h1") == "endpoints/vnet/h1/"
    assert endpoints_in("vnet") == "endpoints/vnet/"
    assert endpoint_key("vnet", "h1", "e1").startswith(endpoints_of("vnet", "h1"))
    assert not endpoint_key("vnet", "h10", "e1").startswith(endpoints_of("vnet", "h1"))
    assert not endpoint_key("vnet2", "h1", "e1").startswith(endpoints_in("vnet"))
    assert legacy_endpoint_key("vnet", "e1") == "endpoints/vnet/e1"
    assert parse_endpoint_key("endpoints/vnet/h1/e1") == ("vnet", "h1", "e1")
    assert parse_endpoint_key("endpoints/vnet/e1") == ("vnet", "", "e1")
    for junk in ("endpoints/vnet", "endpoints/vnet//e1", "endpoints/a/b/c/d", "networks/a/b"):
        assert parse_endpoint_key(junk) is None
    ep = Endpoint("e1", "vnet", "c", "web", "eth0", "cvx", "02:42:0a:00:00:02", node="h1")
    assert ep.key == "endpoints/vnet/h1/e1"
    # A record without a node has no key of now: nothing writes one.
    with pytest.raises(ValueError, match="has no node"):
        endpoint_key("vnet", "", "e1")


def test_on_a_shared_store_only_this_nodes_endpoints_move_and_twice_is_once() -> None:
    inner = MemoryStore(ManualClock())
    store: Any = _Shared(inner)
    mine = _container(inner, "mine", "h1")
    anon = _container(inner, "anon", "")  # from before nodes: the first agent takes it
    theirs = _container(inner, "theirs", "h2")
    _endpoint(inner, "endpoints/n/e-mine", mine, "h1")
    _endpoint(inner, "endpoints/n/e-anon", anon, "")
    _endpoint(inner, "endpoints/n/e-cni", "podman1", "")  # of h1's CNI attachment
    _put(inner, "cni/h1/podman1/eth0", {"endpoint_id": "e-cni", "node": "h1"})
    _endpoint(inner, "endpoints/n/e-stray", "gone", "")  # no container of h1's
    _endpoint(inner, "endpoints/n/e-theirs", theirs, "h2")
    _endpoint(inner, "endpoints/n/h2/e-new", "x", "h2")
    assert move_to_node_layout(store, "h1") == 5  # two containers, three endpoints
    assert _endpoints(inner) == {
        "endpoints/n/e-stray": "",  # whose is unknown: left as it is
        "endpoints/n/e-theirs": "h2",  # h2's agent moves its own
        "endpoints/n/h1/e-anon": "h1",
        "endpoints/n/h1/e-cni": "h1",
        "endpoints/n/h1/e-mine": "h1",
        "endpoints/n/h2/e-new": "h2",
    }
    # The container taken from before nodes names its node now too.
    taken = inner.get(container_key("h1", "anon"))
    assert taken is not None and json.loads(taken.value)["node"] == "h1"
    assert inner.get(layout_key("h1")) is not None
    rev = inner.revision
    assert move_to_node_layout(store, "h1") == 0
    assert inner.revision == rev  # nothing written again
    assert move_to_node_layout(store, "h2") == 2  # its container and endpoint
    assert "endpoints/n/h2/e-theirs" in _endpoints(inner)


def test_on_a_store_of_its_own_every_endpoint_moves_and_names_this_node() -> None:
    store = MemoryStore(ManualClock())
    cid = _container(store, "web", "old", legacy=False)
    _endpoint(store, "endpoints/n/e1", cid, "")  # single-host record
    _endpoint(store, "endpoints/n/e2", cid, "old")  # before per-node keys, renamed since
    _endpoint(store, "endpoints/m/old/e3", cid, "old")  # per-node keys, renamed since
    _endpoint(store, "endpoints/m/new/e4", cid, "new")  # in place
    store.put(layout_key("old"), b'{"version": 2}')
    assert move_to_node_layout(store, "new") == 4  # the container, three endpoints
    assert _endpoints(store) == {
        "endpoints/m/new/e3": "new",
        "endpoints/m/new/e4": "new",
        "endpoints/n/new/e1": "new",
        "endpoints/n/new/e2": "new",
    }
    moved = store.get(container_key("new", "web"))
    assert moved is not None and json.loads(moved.value)["node"] == "new"
    # The former name's mark goes: taking that name again scans again.
    assert [kv.key for kv in store.range("cluster/layout/").kvs] == [layout_key("new")]


def _cluster_of_old_records(inner: MemoryStore) -> None:
    for i in range(3):
        cid = _container(inner, f"c{i}", "h1")
        _put(inner, f"cluster/status/{cid}", {"id": cid, "node": "h1"})
        for net in ("a", "b"):
            _endpoint(inner, f"endpoints/{net}/e{i}", cid, "h1")
    theirs = _container(inner, "t", "h2")
    _endpoint(inner, "endpoints/a/et", theirs, "h2")


def _state(store: MemoryStore) -> list[tuple[str, bytes]]:
    return [(kv.key, kv.value) for kv in store.range("").kvs]


def test_a_start_that_dies_midway_converges_on_the_next() -> None:
    done = MemoryStore(ManualClock())
    _cluster_of_old_records(done)
    transactions = 3 + 3 + 6 + 1  # containers, states, endpoints, the mark
    assert move_to_node_layout(_Shared(done), "h1") == transactions - 1  # type: ignore[arg-type]
    want = _state(done)
    for crash_at in range(transactions):
        inner = MemoryStore(ManualClock())
        _cluster_of_old_records(inner)
        with pytest.raises(_Crash):
            move_to_node_layout(_Crashing(inner, crash_at), "h1")  # type: ignore[arg-type]
        # Not marked before every record is moved: the next start looks again.
        assert inner.get(layout_key("h1")) is None
        move_to_node_layout(_Shared(inner), "h1")  # type: ignore[arg-type]
        assert _state(inner) == want, crash_at


def test_a_start_after_the_mark_reads_the_mark_alone() -> None:
    inner = MemoryStore(ManualClock())
    _cluster_of_old_records(inner)
    first = _Counting(_Shared(inner))
    move_to_node_layout(first, "h1")  # type: ignore[arg-type]
    # The first start scans the keys of the whole cluster...
    assert {("keys", "containers/"), ("keys", "endpoints/")} <= set(first.reads)
    again = _Counting(_Shared(inner))
    assert move_to_node_layout(again, "h1") == 0  # type: ignore[arg-type]
    # ... every later start reads one key.
    assert again.reads == [("get", "cluster/layout/h1")]


@pytest.mark.parametrize("mark", [b'{"version": 1}', b"junk", b'{"v": 2}'])
def test_a_mark_of_an_older_layout_or_unreadable_means_a_scan(mark: bytes) -> None:
    inner = MemoryStore(ManualClock())
    cid = _container(inner, "web", "h1", legacy=False)  # layout 1 was this far
    _endpoint(inner, "endpoints/n/e1", cid, "h1")
    inner.put(layout_key("h1"), mark)
    assert move_to_node_layout(_Shared(inner), "h1") == 1  # type: ignore[arg-type]
    assert list(_endpoints(inner)) == ["endpoints/n/h1/e1"]
    kv = inner.get(layout_key("h1"))
    assert kv is not None and json.loads(kv.value) == {"version": 2}


def test_a_record_that_could_not_move_is_tried_again_at_the_next_start() -> None:
    inner = MemoryStore(ManualClock())
    store: Any = _Shared(inner)
    cid = _container(inner, "web", "h1")
    # Another container holds the name: the user must remove one of them.
    _put(inner, container_key("h2", "web"), {"name": "web", "id": "other"})
    inner.put(name_key("web"), name_claim("h2", "other"))
    _endpoint(inner, "endpoints/n/e1", cid, "h1")
    assert move_to_node_layout(store, "h1") == 1  # the endpoint alone
    assert inner.get(layout_key("h1")) is None
    inner.delete(container_key("h2", "web"))
    inner.delete(name_key("web"))
    assert move_to_node_layout(store, "h1") == 1
    assert inner.get(container_key("h1", "web")) is not None
    assert inner.get(layout_key("h1")) is not None


def test_an_endpoint_already_written_at_its_key_drops_its_stale_copy() -> None:
    inner = MemoryStore(ManualClock())
    _endpoint(inner, "endpoints/n/e1", "c", "h1")
    _endpoint(inner, "endpoints/n/h1/e1", "c", "h1")
    move_to_node_layout(_Shared(inner), "h1")  # type: ignore[arg-type]
    assert list(_endpoints(inner)) == ["endpoints/n/h1/e1"]
    assert inner.get(layout_key("h1")) is not None


def test_on_sqlite_a_host_renamed_and_back_again_keeps_its_records(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "state.db"), ManualClock())
    try:
        cid = _container(store, "web", "a", legacy=False)
        _endpoint(store, endpoint_key("n", "a", "e1"), cid, "a")
        assert move_to_node_layout(store, "a") == 0
        assert move_to_node_layout(store, "b") == 2  # the container and its endpoint
        assert list(_endpoints(store)) == ["endpoints/n/b/e1"]
        # Back to its first name: that name's mark went with the rename.
        assert move_to_node_layout(store, "a") == 2
        assert _endpoints(store) == {"endpoints/n/a/e1": "a"}
        assert [kv.key for kv in store.range("containers/").kvs] == ["containers/a/web"]
        assert [kv.key for kv in store.range("cluster/layout/").kvs] == [layout_key("a")]
    finally:
        store.close()
