"""VIP allocation: range, conflicts, idempotence, nothing half written."""

from __future__ import annotations

import ipaddress
import json

import pytest

from cove.clock import ManualClock
from cove.errors import AlreadyExists, Conflict, InvalidArgument, IpamExhausted, NotFound
from cove.lb.vips import VipService
from cove.model import Network, Subnet
from cove.store import MemoryStore


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(ManualClock())


def test_lowest_free_address_then_idempotent(store: MemoryStore) -> None:
    vips = VipService(store)
    a = vips.assign("web")
    b = vips.assign("db")
    assert str(a.address) == "10.96.0.1" and str(b.address) == "10.96.0.2"
    assert vips.assign("web") == a
    assert vips.assign("WEB", affinity_timeout=60).affinity_timeout == 60
    assert vips.get("web").affinity_timeout == 60
    assert [v.service for v in vips.list()] == ["db", "web"]


def test_bad_requests_write_nothing(store: MemoryStore) -> None:
    vips = VipService(store)
    vips.assign("web", ipaddress.ip_address("10.96.3.3"))
    before = store.revision
    with pytest.raises(InvalidArgument, match="outside the VIP range"):
        vips.assign("db", ipaddress.ip_address("192.0.2.1"))
    with pytest.raises(Conflict, match="taken by service 'web'"):
        vips.assign("db", ipaddress.ip_address("10.96.3.3"))
    with pytest.raises(AlreadyExists):
        vips.assign("web", ipaddress.ip_address("10.96.3.4"))
    with pytest.raises(InvalidArgument):
        vips.assign("no spaces")
    assert store.revision == before


def test_never_inside_a_network_and_exhaustion(store: MemoryStore) -> None:
    net = Network(
        id="n", name="n", bridge="cv-n",
        subnets=(Subnet(ipaddress.ip_network("10.96.0.0/30"), ipaddress.ip_address("10.96.0.1")),),
    )  # fmt: skip
    store.put("networks/n", json.dumps(net.to_json()).encode())
    vips = VipService(store, [ipaddress.ip_network("10.96.0.0/29")])
    with pytest.raises(Conflict, match="inside network 'n'"):
        vips.assign("x", ipaddress.ip_address("10.96.0.2"))
    got = [str(vips.assign(f"s{i}").address) for i in range(3)]
    assert got == ["10.96.0.4", "10.96.0.5", "10.96.0.6"]
    with pytest.raises(IpamExhausted):
        vips.assign("more")


def test_release_frees_the_address(store: MemoryStore) -> None:
    vips = VipService(store)
    a = vips.assign("web")
    vips.release("web")
    with pytest.raises(NotFound):
        vips.get("web")
    with pytest.raises(NotFound):
        vips.release("web")
    assert vips.assign("other").address == a.address
