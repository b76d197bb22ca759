"""Records of the layout before per-node keys, moved at agent start-up on a
real etcd: each agent moves only its own, every name stays claimed once,
and the container operations find them before and after."""

from __future__ import annotations

import json

from cove.clock import SystemClock
from cove.runtime.keys import find_container, name_key
from cove.runtime.relayout import move_to_node_layout
from cove.store import EtcdStore
from etcd_fixture import run_etcd


def _old(store: EtcdStore, name: str, node: str) -> str:
    cid = (name * 64)[:64]
    store.put(f"containers/{name}", json.dumps({"name": name, "id": cid, "node": node}).encode())
    store.put(f"cluster/status/{cid}", json.dumps({"id": cid, "node": node}).encode())
    ep = {"id": f"e-{name}", "network": "n", "container_id": cid, "node": node}
    store.put(f"endpoints/n/e-{name}", json.dumps(ep).encode())
    return cid


def test_each_agent_moves_its_own_old_records_on_etcd() -> None:
    with run_etcd() as url:
        store = EtcdStore([url], SystemClock())
        try:
            a = _old(store, "a", "h1")
            b = _old(store, "b", "h2")
            # Before any move, a lookup by name finds the old records.
            found = find_container(store, "b")
            assert found is not None and found.key == "containers/b"

            assert move_to_node_layout(store, "h1") == 3
            assert [kv.key for kv in store.range("containers/").kvs] == [
                "containers/b",  # h2's: its agent moves it
                "containers/h1/a",
            ]
            assert [kv.key for kv in store.range("endpoints/").kvs] == [
                "endpoints/n/e-b",
                "endpoints/n/h1/e-a",
            ]
            rev = store.revision
            assert move_to_node_layout(store, "h1") == 0  # a restart: nothing left to move
            assert store.revision == rev
            assert move_to_node_layout(store, "h2") == 3
            keys = [kv.key for kv in store.range("").kvs]
            assert keys == [
                "cluster/layout/h1",
                "cluster/layout/h2",
                "cluster/names/a",
                "cluster/names/b",
                f"cluster/status/h1/{a}",
                f"cluster/status/h2/{b}",
                "containers/h1/a",
                "containers/h2/b",
                "endpoints/n/h1/e-a",
                "endpoints/n/h2/e-b",
            ]
            claim = store.get(name_key("b"))
            assert claim is not None and json.loads(claim.value) == {"node": "h2", "id": b}
            found = find_container(store, "b")
            assert found is not None and found.key == "containers/h2/b"
        finally:
            store.close()
