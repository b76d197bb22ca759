"""IPAM: pure address arithmetic and allocation over a real (memory) store."""

from __future__ import annotations

import ipaddress
import threading

import pytest

from cove.clock import ManualClock
from cove.errors import Conflict, InvalidArgument, IpamExhausted, NotFound
from cove.ipam import pool
from cove.ipam.allocator import Ipam, ipam_key
from cove.model import IPAM, NETWORKS, Network
from cove.network.spec import NetworkSpec, build_network
from cove.store.base import RangeResult, Store
from cove.store.cache import CachedReads, StoreCache
from cove.store.memory import MemoryStore


def net(name: str = "vnet", **kw: object) -> Network:
    spec = NetworkSpec(name=name, **kw)  # type: ignore[arg-type]
    return build_network(spec, [], [], 0.0)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(ManualClock())


def put_network(store: MemoryStore, network: Network) -> Network:
    import json

    store.put(NETWORKS + network.name, json.dumps(network.to_json()).encode())
    return network


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


class CountingStore(MemoryStore):
    """A memory store that counts reads of the ``ipam/`` prefix."""

    def __init__(self) -> None:
        super().__init__(ManualClock())
        self.ipam_reads = 0

    def range(self, prefix: str) -> RangeResult:
        if prefix.startswith(IPAM):
            self.ipam_reads += 1
        return super().range(prefix)


def stale_copy(store: Store) -> CachedReads:
    """The hub's copy of the store as it is now, never advanced after (a
    watch that lags as much as it can)."""
    cache = StoreCache([NETWORKS, IPAM])
    cache.fill(store)
    return CachedReads(store, cache)


def test_candidates_come_from_the_copy_and_its_lag_costs_no_duplicate() -> None:
    store = CountingStore()
    n = net(subnets=["10.11.0.0/24"])
    put_network(store, n)
    reads = stale_copy(store)
    # Another host's allocations the copy has not seen.
    others = {ipaddress.ip_address(f"10.11.0.{i}") for i in range(2, 6)}
    for addr in others:
        store.put(ipam_key("vnet", addr), b'{"owner": "h2"}')
    store.ipam_reads = 0
    ipam = Ipam(store, reads)
    got = [ipam.allocate(n, f"c{i}") for i in range(10)]
    assert len(set(got)) == 10 and not set(got) & others
    assert set(ipam.allocations("vnet")) == set(got) | others
    assert store.ipam_reads == 1  # allocations() above; none to allocate


def test_a_copy_that_lags_a_release_still_finds_the_free_address() -> None:
    store = CountingStore()
    n = net(subnets=["10.12.0.0/29"])  # .2 to .6 usable
    put_network(store, n)
    ipam = Ipam(store)
    held = [ipam.allocate(n, f"c{i}") for i in range(5)]
    reads = stale_copy(store)  # full
    ipam.release("vnet", held[2])  # by another host: the copy does not know
    assert Ipam(store, reads).allocate(n, "late") == held[2]
    with pytest.raises(IpamExhausted, match="no free IPv4 address"):
        Ipam(store, reads).allocate(n, "one too many")


def test_a_copy_that_lags_races_lost_elsewhere_still_allocates_uniquely() -> None:
    # The copy says .2 to .6 are free; another host took all but one.
    store = CountingStore()
    n = net(subnets=["10.13.0.0/29"])
    put_network(store, n)
    reads = stale_copy(store)
    for i in (2, 3, 5, 6):
        store.put(ipam_key("vnet", ipaddress.ip_address(f"10.13.0.{i}")), b'{"owner": "h2"}')
    ipam = Ipam(store, reads)
    assert str(ipam.allocate(n, "mine")) == "10.13.0.4"
    with pytest.raises(IpamExhausted):
        ipam.allocate(n, "none left")
