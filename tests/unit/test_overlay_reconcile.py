"""The overlay reconciler against a fake datapath: what each host holds,
entry changes, node death, convergence from any kernel state."""

from __future__ import annotations

import ipaddress
import json

import pytest

from cove.clock import ManualClock
from cove.datapath.base import FdbEntry, NeighEntry, vxlan_name
from cove.datapath.fake import FakeDatapath
from cove.model import ENDPOINTS, Endpoint, Network
from cove.network.overlay import CLUSTER_NODES, FAMILY, TABLE, OverlayReconciler
from cove.network.reconcile import DeleteLink
from cove.network.service import NetworkService
from cove.network.spec import NetworkSpec
from cove.store.memory import MemoryStore

ADDR = {"h1": "192.0.2.11", "h2": "192.0.2.12", "h3": "192.0.2.13"}


class Cluster:
    def __init__(self) -> None:
        self.store = MemoryStore(ManualClock())
        self.svc = NetworkService(self.store, ManualClock())
        self.dps = {h: FakeDatapath() for h in ADDR}
        self.recs = {
            h: OverlayReconciler(self.store, self.dps[h], h, ADDR[h], interval=3600, shared=True)
            for h in ADDR
        }
        for h in ADDR:
            self.node_up(h)

    def node_up(self, name: str) -> None:
        self.store.put(CLUSTER_NODES + name, json.dumps({"name": name, "advertise": ADDR[name]}))

    def node_down(self, name: str) -> None:
        self.store.delete(CLUSTER_NODES + name)

    def network(self, name: str = "ov", subnet: str = "10.203.0.0/24") -> Network:
        spec = NetworkSpec.from_json({"name": name, "driver": "overlay", "subnets": [subnet]})
        return self.svc.create(spec)[0]

    def endpoint(self, net: str, n: int, node: str) -> Endpoint:
        ep = Endpoint(
            id=f"{n:012x}",
            network=net,
            container_id=f"c{n}",
            container_name=f"c{n}",
            interface="eth0",
            host_veth=f"cv{n:010x}",
            mac=f"02:42:00:00:00:{n:02x}",
            ipv4=ipaddress.IPv4Address(f"10.203.0.{n}"),
        )
        data = {**ep.to_json(), "node": node}
        self.store.put(f"{ENDPOINTS}{net}/{ep.id}", json.dumps(data))
        return ep

    def remove(self, ep: Endpoint) -> None:
        self.store.delete(f"{ENDPOINTS}{ep.network}/{ep.id}")

    def sync(self) -> None:
        for rec in self.recs.values():
            rec.run_once()


def fdb(ep: Endpoint, host: str) -> FdbEntry:
    return FdbEntry(ep.mac, ipaddress.ip_address(ADDR[host]))


def neigh(ep: Endpoint) -> NeighEntry:
    assert ep.ipv4 is not None
    return NeighEntry(ep.ipv4, ep.mac)


@pytest.fixture
def c() -> Cluster:
    return Cluster()


def test_hosts_with_endpoints_get_bridge_vxlan_entries(c: Cluster) -> None:
    net = c.network()
    a = c.endpoint("ov", 2, "h1")
    b = c.endpoint("ov", 3, "h2")
    c.sync()
    vx = vxlan_name(net.id)
    h1, h2, h3 = (c.dps[h] for h in ("h1", "h2", "h3"))
    state = h1.vxlans[vx]
    assert (state.vni, state.local, state.port, state.mtu, state.master) == (
        net.vni,
        ADDR["h1"],
        4789,
        1450,
        net.bridge,
    )
    assert not state.learning and state.proxy
    assert h1.bridges[net.bridge].mtu == 1450 and h1.bridges[net.bridge].up
    assert h1.vxlans[vx].fdb == {fdb(b, "h2")}
    assert h1.vxlans[vx].neigh == {neigh(b)}
    assert h2.vxlans[vx].fdb == {fdb(a, "h1")}
    assert h2.vxlans[vx].neigh == {neigh(a)}
    # h3 has no endpoint on ov: nothing at all, not even the port filter.
    assert h3.vxlans == {} and h3.bridges == {} and h3.tables == {}


def test_port_filter_lists_the_other_live_nodes(c: Cluster) -> None:
    c.network()
    c.endpoint("ov", 2, "h1")
    c.sync()
    objs = c.dps["h1"].tables[(FAMILY, TABLE)]
    accepted = [
        e["match"]["right"]["set"]
        for o in objs
        if "rule" in o
        for e in o["rule"]["expr"]
        if "match" in e and e["match"]["left"].get("payload", {}).get("field") == "saddr"
    ]
    assert accepted == [[ADDR["h2"], ADDR["h3"]]]
    assert objs[-1]["rule"]["expr"][-1] == {"drop": None}
    c.node_down("h3")
    c.sync()
    objs = c.dps["h1"].tables[(FAMILY, TABLE)]
    assert json.dumps(objs).count(ADDR["h3"]) == 0


def test_entries_follow_endpoints_and_the_last_one_removes_everything(c: Cluster) -> None:
    net = c.network()
    a = c.endpoint("ov", 2, "h1")
    b = c.endpoint("ov", 3, "h2")
    c.sync()
    d = c.endpoint("ov", 4, "h2")
    c.sync()
    vx = vxlan_name(net.id)
    assert c.dps["h1"].vxlans[vx].fdb == {fdb(b, "h2"), fdb(d, "h2")}
    c.remove(b)
    c.sync()
    assert c.dps["h1"].vxlans[vx].fdb == {fdb(d, "h2")}
    assert c.dps["h1"].vxlans[vx].neigh == {neigh(d)}
    c.remove(a)
    c.sync()
    h1 = c.dps["h1"]
    assert h1.vxlans == {} and h1.bridges == {} and h1.tables == {}
    assert c.dps["h2"].vxlans[vx].fdb == frozenset()


def test_the_last_endpoint_gone_the_bridge_goes_before_the_vxlan_device(c: Cluster) -> None:
    # Whoever sees the VXLAN device gone sees the bridge gone too: the
    # bridge is not left for a moment after its device (a pass can be
    # slow between the two deletions on a busy host).
    net = c.network()
    a = c.endpoint("ov", 2, "h1")
    c.sync()
    c.remove(a)
    ops = c.recs["h1"].run_once()
    deleted = [op.name for op in ops if isinstance(op, DeleteLink)]
    assert deleted == [net.bridge, vxlan_name(net.id)]


def test_a_dead_nodes_entries_stay_while_its_endpoints_do(c: Cluster) -> None:
    net = c.network()
    c.endpoint("ov", 2, "h1")
    b = c.endpoint("ov", 3, "h2")
    c.sync()
    vx = vxlan_name(net.id)
    c.node_down("h2")
    c.sync()
    h1 = c.dps["h1"]
    assert h1.vxlans[vx].fdb == {fdb(b, "h2")}  # traffic keeps flowing
    assert ADDR["h2"] in json.dumps(h1.tables[(FAMILY, TABLE)])
    # A container started on the dead node meanwhile has no address yet.
    e = c.endpoint("ov", 5, "h2")
    c.sync()
    assert fdb(e, "h2") not in h1.vxlans[vx].fdb
    c.node_up("h2")
    c.sync()
    assert h1.vxlans[vx].fdb == {fdb(b, "h2"), fdb(e, "h2")}
    c.remove(b)
    c.sync()
    assert h1.vxlans[vx].fdb == {fdb(e, "h2")}


def test_converges_after_restart_and_from_a_tampered_kernel(c: Cluster) -> None:
    net = c.network()
    c.endpoint("ov", 2, "h1")
    b = c.endpoint("ov", 3, "h2")
    c.sync()
    vx = vxlan_name(net.id)
    h1 = c.dps["h1"]
    stray = FdbEntry("02:99:00:00:00:01", ipaddress.ip_address("192.0.2.99"))
    h1.update_fdb(vx, [stray], [fdb(b, "h2")])
    h1.update_neigh(vx, [], [neigh(b)])
    h1.vxlans["cvxdeadbeef0000"] = h1.vxlans[vx]  # a network that is gone
    h1.tables.pop((FAMILY, TABLE))
    fresh = OverlayReconciler(
        c.store, h1, "h1", ADDR["h1"], interval=3600, shared=True
    )  # a restarted agent
    fresh.run_once()
    assert set(h1.vxlans) == {vx}
    assert h1.vxlans[vx].fdb == {fdb(b, "h2")}
    assert h1.vxlans[vx].neigh == {neigh(b)}
    assert (FAMILY, TABLE) in h1.tables
    h1.ops.clear()
    fresh.run_once()
    assert h1.ops == []  # converged: a second pass changes nothing


def test_a_device_made_with_the_wrong_settings_is_made_again(c: Cluster) -> None:
    from dataclasses import replace

    net = c.network()
    c.endpoint("ov", 2, "h1")
    c.sync()
    vx = vxlan_name(net.id)
    h1 = c.dps["h1"]
    h1.vxlans[vx] = replace(h1.vxlans[vx], proxy=False, learning=True)
    c.recs["h1"].run_once()
    assert h1.vxlans[vx].proxy and not h1.vxlans[vx].learning
    assert ("delete_link", vx) in h1.ops


def test_prepare_bridge_makes_an_overlay_bridge_at_once(c: Cluster) -> None:
    net = c.network()
    local, _ = c.svc.create(NetworkSpec(name="lan", subnets=["10.77.0.0/24"]))
    c.endpoint("ov", 2, "h1")  # the store has it, no pass has run yet
    h1 = c.dps["h1"]
    c.recs["h1"].prepare_bridge(local.bridge)
    assert h1.ops == []  # not an overlay bridge: nothing to do
    c.recs["h1"].prepare_bridge(net.bridge)
    assert net.bridge in h1.bridges and vxlan_name(net.id) in h1.vxlans


def test_a_failing_entry_update_is_reported_and_retried(c: Cluster) -> None:
    net = c.network()
    c.endpoint("ov", 2, "h1")
    b = c.endpoint("ov", 3, "h2")
    h1 = c.dps["h1"]
    h1.fail_on.add("update_fdb")
    c.recs["h1"].run_once()
    assert vxlan_name(net.id) in c.recs["h1"].errors
    h1.fail_on.clear()
    c.recs["h1"].run_once()
    assert c.recs["h1"].errors == {}
    assert h1.vxlans[vxlan_name(net.id)].fdb == {fdb(b, "h2")}


def test_only_overlay_endpoint_events_wake_the_reconciler(c: Cluster) -> None:
    from cove.store.base import Event, EventType, KeyValue

    net = c.network()
    lan, _ = c.svc.create(NetworkSpec(name="lan", subnets=["10.77.0.0/24"]))
    rec = c.recs["h1"]
    rec.run_once()
    kicks: list[int] = []
    rec.kick = lambda: kicks.append(1)  # type: ignore[method-assign]

    def ev(key: str) -> Event:
        return Event(EventType.PUT, KeyValue(key, b"{}", 1, 1, 1))

    rec.on_events([ev(f"{ENDPOINTS}lan/abc")])
    assert kicks == []  # a bridge network's endpoint
    rec.on_events([ev(f"{ENDPOINTS}{net.name}/abc")])
    rec.on_events([ev(f"{ENDPOINTS}brandnew/abc")])  # a network not seen yet
    rec.on_events([ev(f"{CLUSTER_NODES}h9")])
    rec.on_events([ev("networks/x")])
    assert kicks == [1, 1, 1, 1]
    assert lan.bridge not in c.dps["h1"].bridges
    # prepare_bridge of a bridge network's bridge does nothing.
    c.dps["h1"].ops.clear()
    rec.prepare_bridge(lan.bridge)
    assert c.dps["h1"].ops == []


def test_periodic_passes_repair_the_kernel_without_reading_the_store(c: Cluster) -> None:
    from cove.network.overlay import REREAD_EVERY

    net = c.network()
    c.endpoint("ov", 2, "h1")
    b = c.endpoint("ov", 3, "h2")
    rec = c.recs["h1"]
    rec.run_once()
    reads: list[str] = []
    real_range = c.store.range

    def counting(prefix: str, *args: object, **kw: object) -> object:
        reads.append(prefix)
        return real_range(prefix, *args, **kw)  # type: ignore[arg-type]

    c.store.range = counting  # type: ignore[assignment,method-assign]
    vx = vxlan_name(net.id)
    c.dps["h1"].update_fdb(vx, [], [fdb(b, "h2")])  # someone deletes an entry
    rec._pass(False)  # the periodic pass puts it back from what it knows
    assert c.dps["h1"].vxlans[vx].fdb == {fdb(b, "h2")}
    assert reads == []
    for _ in range(REREAD_EVERY - 1):
        rec._pass(False)
    assert reads != []  # now and then it reads the store anyway
    reads.clear()
    rec._pass(True)  # a store event's pass always reads
    assert reads != []


def test_a_malformed_mac_in_the_store_programs_nothing(c: Cluster) -> None:
    net = c.network()
    c.endpoint("ov", 2, "h1")
    bad = c.endpoint("ov", 3, "h2")
    key = f"{ENDPOINTS}ov/{bad.id}"
    data = json.loads(c.store.get(key).value)  # type: ignore[union-attr]
    data["mac"] = "02:42:00:00:00:03 dev lo"
    c.store.put(key, json.dumps(data))
    good = c.endpoint("ov", 4, "h2")
    c.recs["h1"].run_once()
    assert c.dps["h1"].vxlans[vxlan_name(net.id)].fdb == {fdb(good, "h2")}


def test_on_a_store_of_its_own_every_endpoint_is_the_hosts() -> None:
    """SQLite or memory: one host, renamed since its containers were made."""
    store = MemoryStore(ManualClock())
    svc = NetworkService(store, ManualClock())
    spec = NetworkSpec.from_json({"name": "ov", "driver": "overlay"})
    net, _ = svc.create(spec)
    ep = Endpoint(
        id="0123456789ab", network="ov", container_id="c", container_name="c",
        interface="eth0", host_veth="cv0123456789", mac="02:42:00:00:00:09",
        ipv4=ipaddress.IPv4Address("10.89.0.9"),
    )  # fmt: skip
    store.put(f"{ENDPOINTS}ov/{ep.id}", json.dumps({**ep.to_json(), "node": "oldname"}))
    dp = FakeDatapath()
    OverlayReconciler(store, dp, "newname", "127.0.0.1").run_once()
    assert vxlan_name(net.id) in dp.vxlans
    assert dp.vxlans[vxlan_name(net.id)].fdb == frozenset()
