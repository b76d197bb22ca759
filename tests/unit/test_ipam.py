"""IPAM: pure address arithmetic and allocation over a real (memory) store."""

from __future__ import annotations

import ipaddress
import threading

import pytest

from cove.clock import ManualClock
from cove.errors import Conflict, InvalidArgument, IpamExhausted, NotFound
from cove.ipam import pool
from cove.ipam.allocator import Ipam
from cove.model import NETWORKS, Network
from cove.network.spec import NetworkSpec, build_network
from cove.store.memory import MemoryStore


def net(name: str = "vnet", **kw: object) -> Network:
    spec = NetworkSpec(name=name, **kw)  # type: ignore[arg-type]
    return build_network(spec, [], [], 0.0)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(ManualClock())


def put_network(store: MemoryStore, network: Network) -> None:
    import json

    store.put(NETWORKS + network.name, json.dumps(network.to_json()).encode())


def test_first_free_skips_reserved_and_taken() -> None:
    sub = ipaddress.ip_network("10.1.0.0/29")
    gw = ipaddress.ip_address("10.1.0.1")
    taken = {ipaddress.ip_address("10.1.0.2")}
    assert str(pool.first_free(sub, gw, taken)) == "10.1.0.3"
    assert str(pool.first_free(sub, gw, taken, skip=2)) == "10.1.0.5"


def test_first_free_exhausted_names_the_subnet() -> None:
    sub = ipaddress.ip_network("10.1.0.0/30")
    gw = ipaddress.ip_address("10.1.0.1")
    with pytest.raises(IpamExhausted, match="10.1.0.0/30"):
        pool.first_free(sub, gw, {ipaddress.ip_address("10.1.0.2")})


def test_first_free_is_cheap_in_a_huge_ipv6_subnet() -> None:
    sub = ipaddress.ip_network("fd00::/64")
    gw = ipaddress.ip_address("fd00::1")
    assert str(pool.first_free(sub, gw, set())) == "fd00::2"


def test_ip_range_limits_allocation() -> None:
    sub = ipaddress.ip_network("10.1.0.0/24")
    gw = ipaddress.ip_address("10.1.0.1")
    rng = ipaddress.ip_network("10.1.0.128/25")
    assert str(pool.first_free(sub, gw, set(), rng)) == "10.1.0.128"


def test_choose_subnet_avoids_used_and_host_networks() -> None:
    used = [ipaddress.ip_network("10.89.0.0/24"), ipaddress.ip_network("10.89.1.0/25")]
    got = pool.choose_subnet([ipaddress.ip_network("10.89.0.0/16")], 24, used)
    assert str(got) == "10.89.2.0/24"


@pytest.mark.parametrize("text", ["10.0.0.1/24", "nonsense", "10.0.0.0/31", "10.0.0.0/33"])
def test_bad_subnets_are_rejected_with_the_input_named(text: str) -> None:
    with pytest.raises(InvalidArgument, match="subnet"):
        pool.parse_subnet(text)


def test_allocate_lowest_then_release(store: MemoryStore) -> None:
    n = net(subnets=["10.5.0.0/24"])
    put_network(store, n)
    ipam = Ipam(store)
    a = ipam.allocate(n, "c1")
    b = ipam.allocate(n, "c2")
    assert (str(a), str(b)) == ("10.5.0.2", "10.5.0.3")
    ipam.release("vnet", a)
    assert str(ipam.allocate(n, "c3")) == "10.5.0.2"


def test_static_request_conflict_and_reserved(store: MemoryStore) -> None:
    n = net(subnets=["10.5.0.0/24"])
    put_network(store, n)
    ipam = Ipam(store)
    ip = ipaddress.ip_address("10.5.0.9")
    assert ipam.allocate(n, "c1", requested=ip) == ip
    with pytest.raises(Conflict, match="already in use"):
        ipam.allocate(n, "c2", requested=ip)
    with pytest.raises(InvalidArgument, match="reserved"):
        ipam.allocate(n, "c2", requested=ipaddress.ip_address("10.5.0.1"))
    with pytest.raises(InvalidArgument, match="outside"):
        ipam.allocate(n, "c2", requested=ipaddress.ip_address("10.6.0.9"))
    assert ipam.allocations("vnet") == {ip: "c1"}


def test_allocation_on_a_removed_network_fails(store: MemoryStore) -> None:
    n = net(subnets=["10.5.0.0/24"])
    with pytest.raises(NotFound):
        Ipam(store).allocate(n, "c1")


def test_ipv6_allocation(store: MemoryStore) -> None:
    n = net(ipv6=True)
    put_network(store, n)
    ip = Ipam(store).allocate(n, "c1", family=6)
    assert ip.version == 6 and n.ipv6 is not None and ip in n.ipv6.cidr


def test_concurrent_allocations_are_unique(store: MemoryStore) -> None:
    n = net(subnets=["10.7.0.0/24"])
    put_network(store, n)
    ipam = Ipam(store)
    got: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        for j in range(10):
            ip = ipam.allocate(n, f"c{i}-{j}")
            with lock:
                got.append(ip)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 80 and len(set(got)) == 80
    assert len(ipam.allocations("vnet")) == 80


def test_exhaustion_is_a_clear_error(store: MemoryStore) -> None:
    n = net(subnets=["10.8.0.0/30"])
    put_network(store, n)
    ipam = Ipam(store)
    ipam.allocate(n, "c1")
    with pytest.raises(IpamExhausted, match="no free IPv4 address"):
        ipam.allocate(n, "c2")


def test_release_owner(store: MemoryStore) -> None:
    n = net(subnets=["10.9.0.0/24"])
    put_network(store, n)
    ipam = Ipam(store)
    ipam.allocate(n, "a")
    ipam.allocate(n, "b")
    ipam.allocate(n, "a")
    assert len(ipam.release_owner("vnet", "a")) == 2
    assert list(ipam.allocations("vnet").values()) == ["b"]
