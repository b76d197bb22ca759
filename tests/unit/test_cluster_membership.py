"""Node records, membership, the node-name claim and requests between nodes,
on the memory store (the same Store protocol etcd serves)."""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cove.clock import ManualClock
from cove.cluster.advertise import check_local, resolve
from cove.cluster.nodes import (
    CLUSTER_NODES,
    NodeLease,
    NodeRecord,
    members,
    owned,
)
from cove.cluster.requests import REMOVE, STOP, RemoteRequests, RequestServer
from cove.errors import Conflict, InvalidArgument, StorageFull, StoreError, Unavailable
from cove.model import CONTAINERS, Endpoint
from cove.runtime.keys import container_key
from cove.runtime.registration import wanted
from cove.runtime.relayout import move_to_node_layout
from cove.runtime.spec import Container
from cove.store.base import Compare, Op, TxnResult
from cove.store.memory import MemoryStore


def record(name: str, addr: str = "192.0.2.11") -> NodeRecord:
    return NodeRecord(name, addr, "1.0", ("containers",), "2026-12-06T03:00:00Z")


def test_node_record_round_trips_as_the_contract_says() -> None:
    rec = record("h1")
    data = rec.to_json()
    assert data == {
        "name": "h1",
        "advertise": "192.0.2.11",
        "version": "1.0",
        "features": ["containers"],
        "started": "2026-12-06T03:00:00Z",
    }
    assert NodeRecord.from_json(json.loads(json.dumps(data))) == rec


def test_a_live_name_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    first = NodeLease(store, record("h1"), 10, tmp_path / "a.lease")
    first.join()
    before = store.get(CLUSTER_NODES + "h1")
    second = NodeLease(store, record("h1", "192.0.2.12"), 10, tmp_path / "b.lease")
    with pytest.raises(InvalidArgument, match="taken by a live agent"):
        second.join()
    assert store.get(CLUSTER_NODES + "h1") == before
    assert second.lease == 0


def test_a_restart_after_a_crash_takes_its_own_record_over(tmp_path: Path) -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    first = NodeLease(store, record("h1"), 10, tmp_path / "node.lease")
    first.join()
    old = first.lease
    # kill -9: no leave; the same state directory comes back at once.
    again = NodeLease(store, record("h1"), 10, tmp_path / "node.lease")
    again.join()
    assert again.lease != old
    kv = store.get(CLUSTER_NODES + "h1")
    assert kv is not None and kv.lease == again.lease


class _FaultyStore(MemoryStore):
    """A store whose writes fail: ``full`` as on a full disk, ``down`` as an
    unreachable one; ``shared`` answers like etcd (no local abilities)."""

    def __init__(self, clock: ManualClock, *, shared: bool = False) -> None:
        super().__init__(clock)
        self.shared = shared
        self.full = False
        self.down = False
        self.revokes = 0

    def local(self) -> Any:
        return None if self.shared else self

    def _check(self) -> None:
        if self.full:
            raise StorageFull("the store cannot save the change: no space left on the disk")
        if self.down:
            raise StoreError("the store is unavailable: no member answered within 5s")

    def lease_grant(self, ttl: int) -> int:
        self._check()
        return super().lease_grant(ttl)

    def lease_revoke(self, lease: int) -> None:
        self.revokes += 1
        self._check()
        super().lease_revoke(lease)

    def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        self._check()
        return super().put(key, value, lease=lease)

    def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        self._check()
        return super().txn(compares, success, failure)


def test_a_full_local_disk_puts_the_join_off_until_space_returns(tmp_path: Path) -> None:
    store = _FaultyStore(ManualClock())
    store.full = True
    node = NodeLease(store, record("h1"), 10, tmp_path / "node.lease")
    node.join()  # the agent starts read-only: no StorageFull
    assert not node.joined and node.lease == 0
    assert store.get(CLUSTER_NODES + "h1") is None
    node._retry_join()  # still full: still not joined, nothing raised
    assert not node.joined
    store.full = False
    node._retry_join()  # the periodic pass once space is freed
    assert node.joined
    kv = store.get(CLUSTER_NODES + "h1")
    assert kv is not None and kv.lease == node.lease


def test_a_full_disk_does_not_skip_the_name_check(tmp_path: Path) -> None:
    store = _FaultyStore(ManualClock())
    NodeLease(store, record("h1"), 10, tmp_path / "a.lease").join()
    store.full = True
    other = NodeLease(store, record("h1", "192.0.2.12"), 10, tmp_path / "b.lease")
    with pytest.raises(InvalidArgument, match="taken by a live agent"):
        other.join()


def test_a_shared_store_that_cannot_write_stops_the_join(tmp_path: Path) -> None:
    store = _FaultyStore(ManualClock(), shared=True)
    store.full = True
    node = NodeLease(store, record("h1"), 10, tmp_path / "node.lease")
    with pytest.raises(StorageFull):
        node.join()
    assert not node.joined


def test_leaving_waits_on_an_unreachable_store_once(tmp_path: Path) -> None:
    store = _FaultyStore(ManualClock(), shared=True)
    node = NodeLease(store, record("h1"), 10, tmp_path / "node.lease")
    node.join()
    store.down = True
    node.stop(leave=True)
    assert store.revokes == 0  # the lease runs out on its own
    assert node.lease == 0


def test_members_tell_alive_left_and_failed(tmp_path: Path) -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    leases = {}
    for n, name in enumerate(("h1", "h2", "h3")):
        lease = NodeLease(store, record(name, f"192.0.2.{11 + n}"), 10, tmp_path / name)
        lease.join()
        leases[name] = lease
    store.put(container_key("h1", "a"), json.dumps({"node": "h1"}).encode())
    store.put(container_key("h3", "b"), json.dumps({"node": "h3"}).encode())
    store.put(CONTAINERS + "old", json.dumps({}).encode())  # a single-host record, not moved
    leases["h2"].stop(leave=True)
    # h3 dies: its lease runs out.
    for name in ("h1",):
        clock.advance(6)
        store.lease_keepalive(leases[name].lease)
    clock.advance(6)
    store.expire_leases()
    found = {m.name: (m.advertise, m.status, m.containers) for m in members(store, "h1")}
    assert found == {
        "h1": ("192.0.2.11", "alive", 2),
        "h2": ("192.0.2.12", "left", 0),
        "h3": ("192.0.2.13", "failed", 1),
    }


def test_ownership_of_records() -> None:
    assert owned("", "h1")  # older single-host records belong to the local node
    assert owned("h1", "h1")
    assert not owned("h2", "h1")


def test_only_own_containers_services_are_wanted() -> None:
    def container(name: str, node: str) -> Container:
        return Container(
            id=name * 8, name=name, argv=("x",), hostname=name, networks=("n",),
            services=(f"{name}:80",), node=node,
        )  # fmt: skip

    def endpoint(c: Container, ip: str) -> Endpoint:
        return Endpoint(
            id=c.name, network="n", container_id=c.id, container_name=c.name,
            interface="eth0", host_veth="cv" + c.name, mac="02:42:00:00:00:01",
            ipv4=ipaddress.IPv4Address(ip), node=c.node,
        )  # fmt: skip

    cs = [container("a", "h1"), container("b", "h2"), container("c", "")]
    eps = [endpoint(cs[0], "10.0.0.2"), endpoint(cs[1], "10.0.0.3"), endpoint(cs[2], "10.0.0.4")]
    assert sorted(w.container for w in wanted(cs, eps, "h1").values()) == ["a", "c"]
    # A record without a node predates clusters: whichever agent reads it
    # takes it for its own (the contract), so only "a" is left out here.
    assert sorted(w.container for w in wanted(cs, eps, "h2").values()) == ["b", "c"]
    # An agent reads only its own node's container records: another node's
    # endpoints (which carry the services too) are no CNI attachments of its.
    with_services = [replace(ep, services=(f"{ep.container_name}:80",)) for ep in eps]
    assert sorted(w.container for w in wanted(cs[:1], with_services, "h1").values()) == ["a", "c"]


def _serve(server: RequestServer, stop: threading.Event) -> None:
    while not stop.is_set():
        server.run_once()
        stop.wait(0.01)


def test_a_request_is_carried_out_by_the_owner(tmp_path: Path) -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    NodeLease(store, record("h2"), 10, tmp_path / "h2").join()
    done: list[tuple[str, str, Mapping[str, Any]]] = []

    def stop(name: str, cid: str, args: Mapping[str, Any]) -> Mapping[str, Any]:
        done.append((name, cid, args))
        return {"state": {"status": "exited"}}

    def refuse(name: str, cid: str, args: Mapping[str, Any]) -> Mapping[str, Any]:
        raise Conflict(f"container {name} is running: stop it first or use rm -f")

    server = RequestServer(store, clock, "h2", {STOP: stop, REMOVE: refuse})
    halt = threading.Event()
    thread = threading.Thread(target=_serve, args=(server, halt))
    thread.start()
    try:
        asker = RemoteRequests(store, clock, "h1", timeout=10)
        assert asker.ask("h2", STOP, "web", "id1", {"timeout": 1}) == {
            "state": {"status": "exited"}
        }
        assert done == [("web", "id1", {"timeout": 1})]
        with pytest.raises(Conflict, match="is running"):
            asker.ask("h2", REMOVE, "web", "id1", {"force": False})
    finally:
        halt.set()
        thread.join()
    assert store.range("cluster/requests/").kvs == ()  # the asker collected its answers


def test_a_request_to_a_dead_node_names_it() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    asker = RemoteRequests(store, clock, "h1", timeout=1)
    with pytest.raises(Unavailable, match="node h2, whose agent is down"):
        asker.ask("h2", STOP, "web", "id1")
    assert store.range("cluster/requests/").kvs == ()
    # A removal stays as a mark for when the node is back.
    with pytest.raises(Unavailable, match="marked for removal"):
        asker.ask("h2", REMOVE, "web", "id1", {"force": True})
    (kv,) = store.range("cluster/requests/h2/").kvs
    assert json.loads(kv.value)["op"] == REMOVE


def test_a_request_nobody_answers_is_withdrawn(tmp_path: Path) -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    NodeLease(store, record("h2"), 10, tmp_path / "h2").join()
    asker = RemoteRequests(store, clock, "h1", timeout=0.3)
    with pytest.raises(Unavailable, match="did not carry out stop"):
        asker.ask("h2", STOP, "web", "id1")
    assert store.range("cluster/requests/").kvs == ()


def test_advertise_must_be_an_address_of_this_host() -> None:
    assert check_local("127.0.0.1") == "127.0.0.1"
    with pytest.raises(InvalidArgument, match="not an address of this host"):
        check_local("192.0.2.250")
    with pytest.raises(InvalidArgument, match="expected an IPv4 or IPv6 address"):
        check_local("h1.example")
    with pytest.raises(InvalidArgument, match="one address of this host"):
        check_local("0.0.0.0")
    assert resolve(None, shared_store=False) == "127.0.0.1"


def test_a_malformed_request_is_refused_and_does_not_block_the_others(tmp_path: Path) -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    seen: list[str] = []

    def stop(name: str, cid: str, args: Mapping[str, Any]) -> Mapping[str, Any]:
        seen.append(name)
        return {"timeout": float(args.get("timeout", 1))}

    server = RequestServer(store, clock, "h2", {STOP: stop})
    store.put("cluster/requests/h2/a", b"not json")
    store.put("cluster/requests/h2/b", json.dumps(["a", "list"]).encode())
    store.put("cluster/requests/h2/c", json.dumps({"op": STOP, "name": "x", "args": [1]}).encode())
    bad_timeout = {"op": STOP, "name": "y", "id": "1", "args": {"timeout": "soon"}}
    store.put("cluster/requests/h2/d", json.dumps(bad_timeout).encode())
    good = {"op": STOP, "name": "z", "id": "2", "args": {}}
    store.put("cluster/requests/h2/e", json.dumps(good).encode())
    server.run_once()
    assert store.get("cluster/requests/h2/a") is None
    assert store.get("cluster/requests/h2/b") is None
    answers = {
        kv.key.rsplit("/", 1)[1]: json.loads(kv.value)
        for kv in store.range("cluster/requests/h2/").kvs
    }
    assert answers["c"]["error"]["kind"] == "invalid_argument"
    assert answers["d"]["error"]["kind"] == "invalid_argument"
    assert answers["e"]["result"] == {"timeout": 1.0}
    assert seen == ["y", "z"]


class _SharedStore:
    """A memory store that answers as a networked one (etcd) would: no
    in-process abilities, so ownership between nodes applies."""

    def __init__(self, inner: MemoryStore) -> None:
        self._inner = inner

    def local(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _reconcile_env(tmp_path: Path, shared: bool) -> tuple[Any, Any, dict[str, Container]]:
    from cove.datapath.fake import FakeContainerDatapath, FakeNft
    from cove.model import ENDPOINTS, NETWORKS, Network, Subnet
    from cove.runtime.reconcile import ContainerReconciler

    net = Network(
        id="n" * 64,
        name="front",
        subnets=(Subnet(ipaddress.ip_network("10.89.0.0/24"), ipaddress.ip_address("10.89.0.1")),),
        bridge="cv-front00000",
    )
    memory = MemoryStore(ManualClock())
    store: Any = _SharedStore(memory) if shared else memory
    dp = FakeContainerDatapath(bridges=[net.bridge])
    rec = ContainerReconciler(
        store, dp, FakeNft(), tmp_path / "files", lambda: "", guard_nft=FakeNft(), node="h1"
    )
    store.put(NETWORKS + net.name, json.dumps(net.to_json()).encode())
    made: dict[str, Container] = {}
    for n, (name, node) in enumerate((("mine", "h1"), ("theirs", "h2"), ("renamed", "old"))):
        cid = f"{n + 1}" * 64
        c = Container(id=cid, name=name, argv=("x",), hostname=name, networks=("front",), node=node)
        store.put(container_key(node, name), json.dumps(c.to_json()).encode())
        ep = Endpoint(
            id=cid, network="front", container_id=cid, container_name=name, interface="eth0",
            host_veth="cv" + cid[:10], mac=f"02:42:0a:59:00:0{n + 2}",
            ipv4=ipaddress.IPv4Address(f"10.89.0.{n + 2}"), node=node,
        )  # fmt: skip
        store.put(f"{ENDPOINTS}front/{cid}", json.dumps(ep.to_json()).encode())
        made[name] = c
    move_to_node_layout(store, "h1")  # as the agent does at start-up
    return rec, dp, made


def test_on_a_shared_store_a_node_builds_only_its_own_containers(tmp_path: Path) -> None:
    rec, dp, made = _reconcile_env(tmp_path, shared=True)
    # A copy of another host's container, left from before nodes existed.
    dp.create_netns(made["theirs"].id)
    rec.sync()
    assert set(dp.namespaces) == {made["mine"].id}
    assert rec.sync(only=made["theirs"].id, name="theirs") == []


def test_on_a_store_of_its_own_a_renamed_host_keeps_its_containers(tmp_path: Path) -> None:
    rec, dp, made = _reconcile_env(tmp_path, shared=False)
    rec.sync()
    assert set(dp.namespaces) == {c.id for c in made.values()}


def test_node_ttl_and_advertise_settings() -> None:
    from cove.agent.config import load

    cfg = load({"node_ttl": 5, "advertise": "192.0.2.11"}, None, {})
    assert (cfg.node_ttl, cfg.advertise) == (5, "192.0.2.11")
    assert load({}, None, {}).node_ttl == 10
    for bad in (1, 0, "ten", True, 7200):
        with pytest.raises(InvalidArgument, match="node_ttl"):
            load({"node_ttl": bad}, None, {})


def test_a_node_name_that_cannot_be_a_key_segment_is_refused() -> None:
    from cove.agent.config import load

    assert load({"node_name": "h1.example"}, None, {}).node_name == "h1.example"
    for bad in ("", "a/b", " h1", "h1\n"):
        with pytest.raises(InvalidArgument, match="invalid node name .*--node-name"):
            load({"node_name": bad}, None, {})


def test_another_nodes_endpoint_changes_cost_the_registrar_nothing() -> None:
    # Each registrar registers its own node's containers: an endpoint of
    # another node (a start on another host) must not make it re-read the
    # store's agent services, as it did once per change on every host.
    from cove.runtime.registration import _of_node, _records
    from cove.store.base import Event, EventType, KeyValue

    def ev(node: str | None, *, prev: str | None = None) -> Event:
        value = b"" if node is None else json.dumps({"node": node, "services": []}).encode()
        old = None
        if prev is not None:
            old = KeyValue("endpoints/n/1", json.dumps({"node": prev}).encode(), 1, 1, 1)
        kind = EventType.PUT if node is not None else EventType.DELETE
        return Event(kind, KeyValue("endpoints/n/1", value, 1, 2, 1), old)

    assert not _of_node(_records(ev("h2")), "h1")
    assert _of_node(_records(ev("h1")), "h1")
    assert _of_node(_records(ev("")), "h1")  # a record from before nodes: this host's
    assert _of_node(_records(ev("h2")), "")  # a store of one host: everything is its own
    assert not _of_node(_records(ev(None, prev="h2")), "h1")  # a delete of theirs
    assert _of_node(_records(ev(None, prev="h1")), "h1")
    assert _of_node(_records(ev(None)), "h1")  # a delete with no old value: cannot tell
