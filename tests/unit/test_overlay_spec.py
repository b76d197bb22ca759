"""Overlay networks as the store holds them: driver, VNI, MTU, overlaps."""

from __future__ import annotations

import json
import threading

import pytest

from cove.clock import ManualClock
from cove.errors import Conflict, InvalidArgument
from cove.model import NETWORKS, Network, NetworkDriver
from cove.network.service import NetworkService
from cove.network.spec import VNI_FIRST, NetworkSpec
from cove.store.memory import MemoryStore


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(ManualClock())


@pytest.fixture
def svc(store: MemoryStore) -> NetworkService:
    return NetworkService(store, ManualClock())


def overlay(name: str, **kw: object) -> NetworkSpec:
    return NetworkSpec.from_json({"name": name, "driver": "overlay", **kw})


def test_overlay_gets_a_vni_and_the_underlay_mtu_minus_50(svc: NetworkService) -> None:
    net, _ = svc.create(overlay("ov", subnets=["10.203.0.0/24"]))
    assert net.driver is NetworkDriver.OVERLAY
    assert net.vni == VNI_FIRST
    assert net.mtu == 1450
    stored = svc.get("ov")
    assert stored.vni == VNI_FIRST and stored.driver is NetworkDriver.OVERLAY
    second, _ = svc.create(overlay("ov2"))
    assert second.vni == VNI_FIRST + 1


def test_bridge_networks_stay_as_they_were(svc: NetworkService, store: MemoryStore) -> None:
    net, _ = svc.create(NetworkSpec.from_json({"name": "local"}))
    assert net.driver is NetworkDriver.BRIDGE and net.vni is None and net.mtu == 1500
    kv = store.get(NETWORKS + "local")
    assert kv is not None
    data = json.loads(kv.value)
    assert data["driver"] == "bridge" and data["vni"] is None
    # A record written before the field existed reads as a bridge network.
    del data["vni"], data["driver"]
    assert Network.from_json(data).vni is None


def test_given_vni_and_mtu_are_kept(svc: NetworkService) -> None:
    net, _ = svc.create(overlay("ov", vni=77, mtu=1400))
    assert (net.vni, net.mtu) == (77, 1400)


def test_vni_in_use_is_a_conflict_and_writes_nothing(
    svc: NetworkService, store: MemoryStore
) -> None:
    svc.create(overlay("ov", vni=77))
    before = store.revision
    with pytest.raises(Conflict, match="vni 77 is already used by network ov"):
        svc.create(overlay("other", vni=77))
    assert store.revision == before
    assert [n.name for n in svc.list()] == ["ov"]


@pytest.mark.parametrize("vni", [0, -1, 1 << 24, 99999999])
def test_vni_out_of_range(svc: NetworkService, vni: int) -> None:
    with pytest.raises(InvalidArgument, match=r"out of range \(1-16777215\)"):
        svc.create(overlay("ov", vni=vni))
    assert svc.list() == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "x", "driver": "macvlan"}, "unknown network driver 'macvlan'"),
        ({"name": "x", "vni": 5}, "only for overlay networks"),
        ({"name": "x", "driver": "overlay", "vni": "5"}, "'vni' must be an integer"),
        ({"name": "x", "driver": "overlay", "vni": True}, "'vni' must be an integer"),
    ],
)
def test_bad_bodies(body: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        NetworkSpec.from_json(body)


def test_overlay_subnet_overlapping_any_network_is_refused(svc: NetworkService) -> None:
    """Networks are cluster-wide in the store: one made on another host
    overlaps just the same."""
    svc.create(NetworkSpec.from_json({"name": "onh2", "subnets": ["10.203.0.0/16"]}))
    with pytest.raises(Conflict, match="subnet 10.203.1.0/24 overlaps network onh2"):
        svc.create(overlay("ov", subnets=["10.203.1.0/24"]))
    assert [n.name for n in svc.list()] == ["onh2"]


def test_concurrent_creates_get_distinct_vnis(store: MemoryStore) -> None:
    services = [NetworkService(store, ManualClock()) for _ in range(8)]
    out: list[int] = []
    errors: list[BaseException] = []

    def make(i: int) -> None:
        try:
            net, _ = services[i].create(overlay(f"ov{i}"))
            assert net.vni is not None
            out.append(net.vni)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=make, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(out)) == 8
    stored = [n.vni for n in services[0].list()]
    assert sorted(stored) == sorted(out)  # type: ignore[type-var]


@pytest.mark.parametrize("port", [0, 70000, True, "4789"])
def test_agent_refuses_a_bad_vxlan_port(port: object) -> None:
    from cove.agent import config as agent_config

    with pytest.raises(InvalidArgument, match="invalid vxlan_port"):
        agent_config.load({"vxlan_port": port}, None, {})


def test_agent_vxlan_port_default_and_flag() -> None:
    from cove.agent import config as agent_config

    assert agent_config.load({}, None, {}).vxlan_port == 4789
    assert agent_config.load({"vxlan_port": 8472}, None, {}).vxlan_port == 8472
