"""Removing a dead node (``cove members rm``), the reaper of nodes dead too
long, and one lease per node, on the memory store (the Store protocol etcd
serves too)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from cove.clock import ManualClock
from cove.cluster.nodes import CLUSTER_KNOWN, CLUSTER_NODES, NodeLease, NodeRecord
from cove.cluster.nodes import members as list_members
from cove.cluster.reaper import REAPER, NodeReaper
from cove.cluster.removal import MAX_OPS, remove_node
from cove.errors import Conflict, NotFound
from cove.model import CONTAINERS, ENDPOINTS, IPAM, endpoint_key
from cove.registry import Registry
from cove.registry.decode import service_from_json
from cove.registry.runner import CheckRunner
from cove.registry.types import SERF_CHECK, check_key
from cove.runtime.keys import (
    CLUSTER_STATUS,
    container_key,
    layout_key,
    name_claim,
    name_key,
    status_key,
)
from cove.runtime.relayout import move_to_node_layout
from cove.store.base import Compare, Op, TxnResult
from cove.store.memory import MemoryStore

TTL = 10


def record(name: str) -> NodeRecord:
    return NodeRecord(name, f"192.0.2.{10 + int(name[1:])}", "1.0", (), "2026-12-06T05:00:00Z")


def _put(store: MemoryStore, key: str, data: dict[str, Any]) -> None:
    store.put(key, json.dumps(data).encode())


def add_container(
    store: MemoryStore, node: str, name: str, n: int, ports: int = 1, *, legacy: bool = False
) -> str:
    """A container's records as the runtime writes them: the container and
    its name's claim, an endpoint, an IPAM address, host-port claims and its
    process state (``legacy``: at the keys before per-node keys, unclaimed)."""
    cid = f"{name}-id".ljust(64, "0")
    data = {"name": name, "id": cid, "node": node, "networks": ["ov"]}
    if legacy:
        _put(store, CONTAINERS + name, data)
    else:
        _put(store, container_key(node, name), data)
        store.put(name_key(name), name_claim(node, cid))
    ep = f"{ENDPOINTS}ov/{name}-ep" if legacy else endpoint_key("ov", node, f"{name}-ep")
    _put(store, ep, {"container_id": cid, "node": node, "network": "ov"})
    _put(store, f"{IPAM}ov/10.203.0.{n}", {"owner": f"container:{cid}"})
    for p in range(ports):
        _put(store, f"ports/tcp/{8000 + n * 1000 + p}@{node}", {"container": name, "id": cid})
    status = CLUSTER_STATUS + cid if legacy else status_key(node, cid)
    _put(store, status, {"node": node, "status": "running"})
    return cid


class Cluster:
    """Two nodes h1, h2 on one store, each with its node lease and catalog
    (a service with a TTL check on each)."""

    def __init__(self, tmp_path: Path) -> None:
        self.clock = ManualClock()
        self.store = MemoryStore(self.clock)
        self.tmp = tmp_path
        self.leases = {n: self.join(n) for n in ("h1", "h2")}
        for n in ("h1", "h2"):
            reg = Registry(self.store, self.clock, n, node_address=record(n).advertise)
            reg.catalog.ensure_node(lease=self.leases[n].lease)
            inst, checks = service_from_json(
                {"Name": "web", "ID": f"web-{n}", "Port": 80, "Check": {"TTL": "30s"}}, n
            )
            reg.catalog.register_service(inst, checks)
        self.registry = Registry(self.store, self.clock, "h1")

    def join(self, name: str) -> NodeLease:
        lease = NodeLease(self.store, record(name), TTL, self.tmp / f"{name}.lease")
        lease.join()
        return lease

    def kill(self, name: str) -> None:
        """``name``'s agent dies: only the others renew, until its lease ran out."""
        self.leases.pop(name, None)
        self.tick(TTL * 2)

    def tick(self, seconds: float) -> None:
        """Time passes; the agents in ``leases`` renew theirs."""
        end = self.clock.time() + seconds
        while self.clock.time() < end:
            self.clock.advance(min(TTL / 2, end - self.clock.time()))
            for lease in self.leases.values():
                self.store.lease_keepalive(lease.lease)
            self.store.expire_leases()

    def web_nodes(self) -> list[str]:
        return sorted(e["Node"]["Node"] for e in self.registry.queries.health_service("web").data)

    def all_keys(self, prefix: str = "") -> list[str]:
        return [kv.key for kv in self.store.range(prefix).kvs]


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    return Cluster(tmp_path)


def test_a_live_node_is_refused_and_nothing_changes(cluster: Cluster) -> None:
    add_container(cluster.store, "h2", "api", 2)
    before = cluster.store.revision
    with pytest.raises(Conflict) as err:
        remove_node(cluster.store, "h2", local="h1")
    assert "node h2 is alive" in err.value.message
    assert "stop the agent on h2" in err.value.message and "--force" in err.value.message
    assert err.value.exit_code != 0 and err.value.http_status == 409
    assert cluster.store.revision == before
    # Its own node, even with --force: run it on another host.
    with pytest.raises(Conflict, match="this agent's own node"):
        remove_node(cluster.store, "h1", force=True, local="h1")
    with pytest.raises(NotFound, match="no node named 'h9'"):
        remove_node(cluster.store, "h9", local="h1")
    assert cluster.store.revision == before


def test_a_dead_node_goes_with_everything_it_owned(cluster: Cluster) -> None:
    store = cluster.store
    mine = add_container(store, "h1", "db", 1)
    # c2 in the layout before per-node keys (h2 died before it moved it).
    theirs = [add_container(store, "h2", f"c{i}", i + 2, legacy=i == 2) for i in range(3)]
    _put(store, f"{ENDPOINTS}ov/cni-ep", {"container_id": "podman1", "node": "h2"})
    _put(store, f"{IPAM}ov/10.203.0.99", {"owner": "cni:h2/podman1/eth0"})
    _put(store, "cni/h2/podman1/eth0", {"network": "ov"})
    store.put("cluster/requests/h2/abcd", b'{"op": "rm"}')
    store.put(layout_key("h2"), b'{"version": 2}')  # (c2: its agent's last start crashed)
    store.put(layout_key("h1"), b'{"version": 2}')
    assert cluster.web_nodes() == ["h1", "h2"]
    cluster.kill("h2")
    assert {m.name: m.status for m in list_members(store, "h1")} == {
        "h1": "alive",
        "h2": "failed",
    }
    removed = remove_node(store, "h2", local="h1")
    assert sorted(removed.containers) == ["c0", "c1", "c2"]
    assert (removed.endpoints, removed.addresses, removed.ports) == (4, 4, 3)
    assert removed.services == 2 and removed.checks == 1  # web, and the agent's "consul"
    # Nothing of h2 is left anywhere in the store.
    leftovers = [k for k in cluster.all_keys() if "h2" in k or any(t[:8] in k for t in theirs)]
    assert leftovers == []
    assert cluster.all_keys(name_key("")) == [name_key("db")]  # h2's names are free
    assert [m.name for m in list_members(store, "h1")] == ["h1"]
    assert cluster.web_nodes() == ["h1"]
    queries = cluster.registry.queries
    assert [n["Node"] for n in queries.nodes().data] == ["h1"]
    assert queries.health_node("h2").data == []
    assert queries.member("h2") is None
    # h1's records are untouched.
    assert store.get(container_key("h1", "db")) is not None
    assert store.get(f"{IPAM}ov/10.203.0.1") is not None
    assert store.get(status_key("h1", mine)) is not None
    assert store.get(CLUSTER_NODES + "h1") is not None
    assert cluster.all_keys("cluster/layout/") == [layout_key("h1")]
    # Removing it again: it is unknown now.
    with pytest.raises(NotFound):
        remove_node(store, "h2", local="h1")


class _Recording(MemoryStore):
    """Counts the operations of each transaction; ``after_txn`` runs after
    the n-th one (a node coming back in the middle of a removal)."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.sizes: list[int] = []
        self.after: tuple[int, Callable[[], None]] | None = None

    def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        result = super().txn(compares, success, failure)
        self.sizes.append(len(success))
        if self.after is not None and len(self.sizes) == self.after[0]:
            hook, self.after = self.after[1], None
            hook()
        return result


def test_transactions_stay_bounded_and_a_returning_node_stops_the_removal(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    store = _Recording(clock)
    lease = NodeLease(store, record("h2"), TTL, tmp_path / "h2.lease")
    lease.join()
    for i in range(40):
        add_container(store, "h2", f"c{i:02}", i + 2, ports=5)
    add_container(store, "h2", "wide", 250, ports=300)  # more records than one txn takes
    clock.advance(TTL + 1)
    store.expire_leases()
    store.sizes.clear()
    back = NodeLease(store, record("h2"), TTL, tmp_path / "h2.lease")
    # The node's agent joins again after the removal's 10th transaction.
    store.after = (10, back.join)
    with pytest.raises(Conflict, match="node h2 joined the cluster again"):
        remove_node(store, "h2")
    assert max(store.sizes) <= MAX_OPS
    # Ten containers were removed whole; the rest is the returned node's.
    left = [kv.key for kv in store.range(CONTAINERS).kvs]
    assert len(left) == 41 - 10
    for kv in store.range(CONTAINERS).kvs:
        cid = json.loads(kv.value)["id"]
        assert store.get(status_key("h2", cid)) is not None
        assert store.get(name_key(json.loads(kv.value)["name"])) is not None
    assert store.get(CLUSTER_NODES + "h2") is not None
    assert store.get(CLUSTER_KNOWN + "h2") is not None

    # Once it is dead again, the rest goes, the wide one included.
    clock.advance(TTL + 1)
    store.expire_leases()
    store.sizes.clear()
    removed = remove_node(store, "h2")
    assert len(removed.containers) == 31 and "wide" in removed.containers
    assert max(store.sizes) <= MAX_OPS
    assert [kv.key for kv in store.range("ports/").kvs] == []
    assert [kv.key for kv in store.range(CONTAINERS).kvs] == []


def test_force_removes_a_live_node_which_joins_again_with_nothing(cluster: Cluster) -> None:
    add_container(cluster.store, "h2", "api", 2)
    node = cluster.leases["h2"]
    leases: list[int] = []
    rejoined: list[bool] = []
    node.on_lease(leases.append)
    node.on_rejoin(lambda: rejoined.append(True))
    old = node.lease
    removed = remove_node(cluster.store, "h2", force=True, local="h1")
    assert removed.containers == ["api"]
    assert cluster.store.get(CLUSTER_NODES + "h2") is None
    # Its lease is revoked: serfHealth went with it.
    assert cluster.store.get(check_key("", "h2", SERF_CHECK)) is None
    # The agent's next renewal finds the lease gone and joins again, fresh.
    node.start()
    try:
        for _ in range(100):
            if rejoined:
                break
            cluster.clock.advance(0.1)
            import time

            time.sleep(0.05)
    finally:
        node.stop(leave=False)
    assert rejoined == [True]
    assert (
        leases and leases[-1] != old and leases[-1] == cluster.store.get(CLUSTER_NODES + "h2").lease
    )  # type: ignore[union-attr]
    assert [m.status for m in list_members(cluster.store, "h1")] == ["alive", "alive"]
    assert cluster.store.get(container_key("h2", "api")) is None


def test_the_reaper_removes_nodes_dead_too_long_one_reaper_at_a_time(cluster: Cluster) -> None:
    store, clock = cluster.store, cluster.clock
    add_container(store, "h2", "api", 2)
    h3 = cluster.join("h3")
    cluster.leases["h3"] = h3
    reapers = {
        n: NodeReaper(store, clock, n, lambda n=n: cluster.leases[n].lease, 3600.0)
        for n in ("h1", "h3")
    }
    assert [r.holds() for r in reapers.values()] == [True, False]
    assert json.loads(store.get(REAPER).value) == {"node": "h1"}  # type: ignore[union-attr]
    cluster.kill("h2")
    assert reapers["h3"].run_once() == []  # not the reaper: writes nothing
    assert "dead_since" not in json.loads(store.get(CLUSTER_KNOWN + "h2").value)  # type: ignore[union-attr]
    assert reapers["h1"].run_once() == []  # notes when it saw h2 dead
    since = json.loads(store.get(CLUSTER_KNOWN + "h2").value)["dead_since"]  # type: ignore[union-attr]
    assert since == clock.time()
    cluster.tick(1800)
    assert reapers["h1"].run_once() == []
    # h1 dies: h3 takes over, and carries on from h1's mark.
    cluster.kill("h1")
    cluster.tick(1800)
    assert reapers["h3"].run_once() == ["h2"]
    assert store.get(container_key("h2", "api")) is None
    assert "h2" not in {m.name for m in list_members(store, "h3")}
    # A node that comes back before its time clears its mark.
    assert reapers["h3"].run_once() == []  # marks h1
    assert "dead_since" in json.loads(store.get(CLUSTER_KNOWN + "h1").value)  # type: ignore[union-attr]
    cluster.leases["h1"] = cluster.join("h1")
    assert "dead_since" not in json.loads(store.get(CLUSTER_KNOWN + "h1").value)  # type: ignore[union-attr]


class _Source:
    def __init__(self, lease: int) -> None:
        self.lease = lease
        self.listeners: list[Callable[[int], None]] = []

    def on_lease(self, callback: Callable[[int], None]) -> None:
        self.listeners.append(callback)


def test_serf_health_rides_on_the_node_lease(cluster: Cluster) -> None:
    store = cluster.store
    node = cluster.leases["h1"]
    reg = Registry(store, cluster.clock, "h1", node_address="192.0.2.11")
    new_lease = store.lease_grant(TTL)
    grants: list[int] = []
    grant = store.lease_grant

    def counted(ttl: int) -> int:
        grants.append(ttl)
        return grant(ttl)

    store.lease_grant = counted  # type: ignore[method-assign]

    async def scenario() -> tuple[int, int]:
        source = _Source(node.lease)
        runner = CheckRunner(reg, node_lease=source, lease_ttl=TTL)
        await runner.start()
        try:
            first = store.get(check_key("", "h1", SERF_CHECK))
            assert first is not None
            # The node joined again with a new lease: serfHealth follows.
            source.lease = new_lease
            for listener in source.listeners:
                listener(source.lease)
            for _ in range(50):
                await asyncio.sleep(0.02)
                kv = store.get(check_key("", "h1", SERF_CHECK))
                if kv is not None and kv.lease == source.lease:
                    break
            second = store.get(check_key("", "h1", SERF_CHECK))
            assert second is not None
            return first.lease, second.lease
        finally:
            await runner.stop()

    first, second = asyncio.run(scenario())
    assert first == node.lease
    assert second == new_lease
    assert grants == []  # the runner made no lease of its own


@pytest.mark.parametrize("name", ["", "h2/x", " h2", "h2/"])
def test_a_name_that_is_no_node_name_is_refused(cluster: Cluster, name: str) -> None:
    from cove.errors import InvalidArgument

    before = cluster.store.revision
    with pytest.raises(InvalidArgument, match="invalid node name"):
        remove_node(cluster.store, name, local="h1")
    assert cluster.store.revision == before


def test_a_container_changed_during_the_removal_is_read_again(tmp_path: Path) -> None:
    clock = ManualClock()
    store = _Recording(clock)
    NodeLease(store, record("h2"), TTL, tmp_path / "h2.lease").join()
    add_container(store, "h2", "a", 2)
    cid = add_container(store, "h2", "b", 3)
    clock.advance(TTL + 1)
    store.expire_leases()

    def connect_b() -> None:
        # Another host connects b to a second network meanwhile.
        _put(store, container_key("h2", "b"), {"name": "b", "id": cid, "node": "h2",
                                       "networks": ["ov", "back"]})  # fmt: skip
        _put(store, f"{ENDPOINTS}back/b-ep2", {"container_id": cid, "node": "h2"})
        _put(store, f"{IPAM}back/10.89.0.5", {"owner": f"container:{cid}"})

    store.sizes.clear()
    store.after = (1, connect_b)
    removed = remove_node(store, "h2")
    assert sorted(removed.containers) == ["a", "b"]
    assert removed.endpoints == 3 and removed.addresses == 3
    assert [kv.key for kv in store.range(ENDPOINTS).kvs] == []
    assert [kv.key for kv in store.range(IPAM).kvs] == []
    assert [kv.key for kv in store.range(CONTAINERS).kvs] == []


def test_reap_after_takes_durations_and_refuses_nonsense(tmp_path: Path) -> None:
    from cove.agent.config import load
    from cove.errors import InvalidArgument

    assert load({}, None, {}).reap_after is None  # off by default
    assert load({"reap_after": "72h"}, None, {}).reap_after == 72 * 3600
    assert load({"reap_after": "90s"}, None, {}).reap_after == 90
    assert load({"reap_after": "off"}, None, {}).reap_after is None
    conf = tmp_path / "agent.toml"
    conf.write_text("reap_after = 600\n")
    assert load({}, conf, {}).reap_after == 600
    for bad in ("soon", "1s", "-5m", True):
        with pytest.raises(InvalidArgument, match="invalid reap_after"):
            load({"reap_after": bad}, None, {})


def test_a_node_removed_then_joining_again_moves_its_old_records_again(
    cluster: Cluster,
) -> None:
    """Its layout mark goes with it: an agent of that name starting later
    does not take the mark of the removed node for its own."""
    store = cluster.store
    move_to_node_layout(store, "h2")
    assert store.get(layout_key("h2")) is not None
    cluster.kill("h2")
    remove_node(store, "h2", local="h1")
    assert store.get(layout_key("h2")) is None
    # An old-layout record of that name shows up (restored from a backup,
    # say): the next start of h2 moves it and marks the layout again.
    add_container(store, "h2", "late", 7, legacy=True)
    assert move_to_node_layout(store, "h2") == 3  # container, state, endpoint
    assert store.get(endpoint_key("ov", "h2", "late-ep")) is not None
    assert store.get(layout_key("h2")) is not None
