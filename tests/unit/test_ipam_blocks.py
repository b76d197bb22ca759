"""Per-node address blocks (Calico's block affinity): the block arithmetic,
and allocators of several nodes sharing one (memory) store."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Sequence

import pytest
from test_ipam import net, put_network

from cove.clock import ManualClock
from cove.cluster.nodes import CLUSTER_KNOWN
from cove.cluster.removal import remove_node
from cove.errors import Conflict, IpamExhausted, NotFound
from cove.ipam import blocks
from cove.ipam.allocator import Ipam
from cove.model import IPAM_BLOCKS, NETWORKS, IPAddress, IPNetwork
from cove.network.service import NetworkService
from cove.network.spec import NetworkSpec
from cove.store.base import Compare, Op, TxnResult
from cove.store.cache import CachedReads, StoreCache
from cove.store.memory import MemoryStore


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def cidr(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(ManualClock())


def owners(store: MemoryStore, name: str = "vnet") -> dict[str, str]:
    """Block -> node, as the store holds them."""
    out = {}
    for kv in store.range(blocks.blocks_prefix(name)).kvs:
        block = blocks.decode(kv.key, kv.value)
        assert block is not None, kv
        out[str(block.cidr)] = block.node
    return out


# -- the arithmetic -------------------------------------------------------------


def test_subnets_are_cut_into_26s_and_122s_and_small_ones_are_one_block() -> None:
    assert [str(b) for b in blocks.candidate_blocks(cidr("10.1.0.0/24"))] == [
        "10.1.0.0/26",
        "10.1.0.64/26",
        "10.1.0.128/26",
        "10.1.0.192/26",
    ]
    assert [str(b) for b in blocks.candidate_blocks(cidr("10.1.0.0/28"))] == ["10.1.0.0/28"]
    v6 = blocks.candidate_blocks(cidr("fd00::/64"))  # 2^58 blocks: lazily
    assert [str(next(v6)), str(next(v6))] == ["fd00::/122", "fd00::40/122"]
    assert str(blocks.block_of(cidr("10.1.0.0/16"), ip("10.1.3.200"))) == "10.1.3.192/26"


def test_an_ip_range_keeps_only_the_blocks_it_touches() -> None:
    sub = cidr("10.1.0.0/24")
    assert [str(b) for b in blocks.candidate_blocks(sub, cidr("10.1.0.128/25"))] == [
        "10.1.0.128/26",
        "10.1.0.192/26",
    ]
    # A range smaller than a block: its one block, allocated only inside the range.
    assert [str(b) for b in blocks.candidate_blocks(sub, cidr("10.1.0.80/28"))] == ["10.1.0.64/26"]
    got = blocks.first_free_in(
        [cidr("10.1.0.64/26")], sub, ip("10.1.0.1"), set(), cidr("10.1.0.80/28")
    )
    assert str(got) == "10.1.0.80"


def test_first_free_in_walks_the_blocks_skips_reserved_and_spreads_on_skip() -> None:
    sub, gw = cidr("10.1.0.0/24"), ip("10.1.0.1")
    mine = [cidr("10.1.0.0/26"), cidr("10.1.0.192/26")]
    assert str(blocks.first_free_in(mine, sub, gw, set())) == "10.1.0.2"
    full = {ip(f"10.1.0.{i}") for i in range(2, 64)}
    assert str(blocks.first_free_in(mine, sub, gw, full)) == "10.1.0.192"
    assert str(blocks.first_free_in(mine, sub, gw, full, skip=3)) == "10.1.0.195"
    # The broadcast address is not free, and skip past the end gives the lowest.
    almost = full | {ip(f"10.1.0.{i}") for i in range(192, 254)}
    assert str(blocks.first_free_in(mine, sub, gw, almost, skip=5)) == "10.1.0.254"
    with pytest.raises(IpamExhausted):
        blocks.first_free_in(mine, sub, gw, almost | {ip("10.1.0.254")})


def test_unclaimed_skips_claimed_and_full_blocks() -> None:
    sub, gw = cidr("10.1.0.0/24"), ip("10.1.0.1")
    claimed = {cidr("10.1.0.0/26")}
    full = {ip(f"10.1.0.{i}") for i in range(64, 128)}
    got = blocks.unclaimed(sub, gw, claimed, full)
    assert [str(b) for b in got] == ["10.1.0.128/26", "10.1.0.192/26"]


def test_records_name_their_block_and_a_record_for_another_block_is_refused() -> None:
    block = cidr("10.1.0.64/26")
    key = blocks.block_key("web", block)
    assert key == "ipamblocks/web/10.1.0.64"
    assert blocks.decode(key, blocks.encode("h1", block)) == blocks.Block(block, "h1")
    assert blocks.decode(key, blocks.encode("h1", cidr("10.1.0.0/26"))) is None
    assert blocks.decode(key, b"not json") is None
    assert blocks.blocks_prefix("web") == "ipamblocks/web/"  # not the blocks of "web2"


# -- allocators on several nodes --------------------------------------------------


def test_two_nodes_allocate_in_blocks_of_their_own(store: MemoryStore) -> None:
    n = put_network(store, net(subnets=["10.5.0.0/24"]))
    h1, h2 = Ipam(store, node="h1"), Ipam(store, node="h2")
    a1, b1, a2, b2 = (
        h1.allocate(n, "a1"),
        h2.allocate(n, "b1"),
        h1.allocate(n, "a2"),
        h2.allocate(n, "b2"),
    )
    assert [str(x) for x in (a1, a2)] == ["10.5.0.2", "10.5.0.3"]
    assert [str(x) for x in (b1, b2)] == ["10.5.0.64", "10.5.0.65"]
    assert owners(store) == {"10.5.0.0/26": "h1", "10.5.0.64/26": "h2"}
    # A released address is reused by its block's node, and the block stays.
    h1.release("vnet", a1)
    assert owners(store) == {"10.5.0.0/26": "h1", "10.5.0.64/26": "h2"}
    assert h2.allocate(n, "b3") == ip("10.5.0.66")
    assert h1.allocate(n, "a3") == a1


def test_a_full_block_leads_to_claiming_the_next(store: MemoryStore) -> None:
    n = put_network(store, net(subnets=["10.5.0.0/24"]))
    h1, h2 = Ipam(store, node="h1"), Ipam(store, node="h2")
    h2.allocate(n, "b0")  # h2 holds 10.5.0.0/26
    got = [h1.allocate(n, f"a{i}") for i in range(65)]
    assert got[0] == ip("10.5.0.64") and got[63] == ip("10.5.0.127")  # all 64 of its block
    assert got[64] == ip("10.5.0.128")  # then the next free block
    assert owners(store) == {"10.5.0.0/26": "h2", "10.5.0.64/26": "h1", "10.5.0.128/26": "h1"}
    assert h2.allocate(n, "b1") == ip("10.5.0.3")


def test_when_every_block_is_claimed_addresses_are_borrowed_until_exhausted(
    store: MemoryStore,
) -> None:
    n = put_network(store, net(subnets=["10.5.0.0/25"]))  # two blocks, 125 addresses
    h1, h2, h3 = (Ipam(store, node=h) for h in ("h1", "h2", "h3"))
    h1.allocate(n, "a")
    h2.allocate(n, "b")
    # h3 finds no block to claim: it borrows the lowest free address anywhere.
    assert h3.allocate(n, "c0") == ip("10.5.0.3")
    assert set(owners(store).values()) == {"h1", "h2"}
    rest = [h3.allocate(n, f"c{i}") for i in range(1, 123)]
    assert len(set(rest)) == 122
    assert len(h3.allocations("vnet")) == 125
    for ipam in (h1, h2, h3):
        with pytest.raises(IpamExhausted, match="no free IPv4 address"):
            ipam.allocate(n, "one too many")


def test_a_small_subnet_is_one_block_and_still_fills_up(store: MemoryStore) -> None:
    n = put_network(store, net(subnets=["10.5.0.0/29"]))  # .2 to .6
    h1, h2 = Ipam(store, node="h1"), Ipam(store, node="h2")
    got = {h1.allocate(n, "a"), h2.allocate(n, "b"), h2.allocate(n, "c"), h1.allocate(n, "d")}
    got.add(h2.allocate(n, "e"))
    assert len(got) == 5
    assert owners(store) == {"10.5.0.0/29": "h1"}
    with pytest.raises(IpamExhausted):
        h2.allocate(n, "f")


def test_a_requested_address_in_another_nodes_block_is_granted_and_never_reused(
    store: MemoryStore,
) -> None:
    n = put_network(store, net(subnets=["10.5.0.0/24"]))
    h1, h2 = Ipam(store, node="h1"), Ipam(store, node="h2")
    h1.allocate(n, "a")  # 10.5.0.0/26 is h1's
    assert h2.allocate(n, "static", requested=ip("10.5.0.3")) == ip("10.5.0.3")
    with pytest.raises(Conflict, match="already in use"):
        h1.allocate(n, "again", requested=ip("10.5.0.3"))
    assert h1.allocate(n, "next") == ip("10.5.0.4")  # h1 steps over it
    assert owners(store) == {"10.5.0.0/26": "h1"}  # a static address claims nothing


def test_the_ip_range_decides_which_blocks_are_claimed(store: MemoryStore) -> None:
    n = put_network(store, net(subnets=["10.5.0.0/24"], ip_ranges=["10.5.0.128/25"]))
    h1, h2 = Ipam(store, node="h1"), Ipam(store, node="h2")
    assert h1.allocate(n, "a") == ip("10.5.0.128")
    assert h2.allocate(n, "b") == ip("10.5.0.192")
    assert owners(store) == {"10.5.0.128/26": "h1", "10.5.0.192/26": "h2"}


def test_ipv6_blocks(store: MemoryStore) -> None:
    n = put_network(store, net(ipv6=True))
    assert n.ipv6 is not None
    base = n.ipv6.cidr.network_address
    h1, h2 = Ipam(store, node="h1"), Ipam(store, node="h2")
    assert h1.allocate(n, "a", family=6) == base + 2
    assert h2.allocate(n, "b", family=6) == base + 64
    assert owners(store) == {f"{base}/122": "h1", f"{base + 64}/122": "h2"}


def test_a_lagging_copy_neither_hides_our_new_block_nor_loses_a_race(store: MemoryStore) -> None:
    n = put_network(store, net(subnets=["10.5.0.0/24"]))
    cache = StoreCache([NETWORKS, IPAM_BLOCKS, "ipam/"])
    cache.fill(store)  # never advanced: as stale as a copy can be
    reads = CachedReads(store, cache)
    h2 = Ipam(store, node="h2")
    h2.allocate(n, "b")  # claims 10.5.0.0/26 behind the copy's back
    h1 = Ipam(store, reads, node="h1")
    got = [h1.allocate(n, f"a{i}") for i in range(3)]
    assert [str(x) for x in got] == ["10.5.0.64", "10.5.0.65", "10.5.0.66"]
    assert owners(store) == {"10.5.0.0/26": "h2", "10.5.0.64/26": "h1"}


def test_concurrent_allocations_on_three_nodes_are_unique_and_in_their_blocks(
    store: MemoryStore,
) -> None:
    n = put_network(store, net(subnets=["10.7.0.0/24"]))
    got: dict[str, list[IPAddress]] = {"h1": [], "h2": [], "h3": []}
    lock = threading.Lock()

    def worker(node: str, ipam: Ipam, i: int) -> None:
        for j in range(27):
            addr = ipam.allocate(n, f"{node}-{i}-{j}")
            with lock:
                got[node].append(addr)

    # Three threads per node, sharing their node's allocator as an agent
    # does; each node has claimed its first block already.
    threads = []
    for node in got:
        ipam = Ipam(store, node=node)
        got[node].append(ipam.allocate(n, f"{node}-first"))
        threads += [threading.Thread(target=worker, args=(node, ipam, i)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [a for addrs in got.values() for a in addrs]
    assert len(every) == 246 and len(set(every)) == 246
    assert len(Ipam(store).allocations("vnet")) == 246
    blocks_of = owners(store)
    assert len(blocks_of) == 4 and set(blocks_of.values()) <= set(got)
    # A node's first 30 addresses are in its own block: it cannot be full yet
    # (61 free; another node borrows at most 81 - 63 addresses).
    for node, addrs in got.items():
        for addr in addrs[:30]:
            assert blocks_of[str(blocks.block_of(cidr("10.7.0.0/24"), addr))] == node


class SlowStore(MemoryStore):
    """A store whose transactions take a round trip (the GIL released, as
    on a socket), counting the compare-and-swaps lost."""

    def __init__(self) -> None:
        super().__init__(ManualClock())
        self.lost = 0

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        time.sleep(0.0005)
        result = super().txn(compares, ops)
        self.lost += not result.succeeded
        return result


@pytest.mark.parametrize("per_node", [True, False])
def test_hosts_allocating_at_once_in_their_own_blocks_rarely_race(per_node: bool) -> None:
    store = SlowStore()
    n = put_network(store, net(subnets=["10.7.0.0/22"]))  # 16 blocks: no borrowing
    nodes = [Ipam(store, node=f"h{i}" if per_node else "") for i in range(3)]

    def worker(ipam: Ipam, i: int) -> None:
        for j in range(60):
            ipam.allocate(n, f"{i}-{j}")

    threads = [threading.Thread(target=worker, args=(nodes[i % 3], i)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(Ipam(store).allocations("vnet")) == 540
    # Measured: about 25 lost with blocks; about 650 without (every host
    # tries the same lowest addresses).
    if per_node:
        assert store.lost < 100, store.lost
    else:
        assert store.lost > 100, store.lost


def test_removing_the_network_removes_its_blocks(store: MemoryStore) -> None:
    service = NetworkService(store, ManualClock())
    web, _ = service.create(NetworkSpec(name="web", subnets=["10.5.0.0/24"]))
    web2, _ = service.create(NetworkSpec(name="web2", subnets=["10.6.0.0/24"]))
    for network in (web, web2):
        Ipam(store, node="h1").allocate(network, "a")
        Ipam(store, node="h2").allocate(network, "b")
    assert [(str(b.cidr), b.node) for b in service.blocks("web")] == [
        ("10.5.0.0/26", "h1"),
        ("10.5.0.64/26", "h2"),
    ]
    for kv in store.range("ipam/web/").kvs:
        store.delete(kv.key)  # the containers went
    service.remove("web")
    assert owners(store, "web") == {}
    assert owners(store, "web2") == {"10.6.0.0/26": "h1", "10.6.0.64/26": "h2"}
    with pytest.raises(NotFound):
        Ipam(store, node="h1").allocate(web, "late")
    assert owners(store, "web") == {}  # a late claim writes nothing


def test_removing_a_node_frees_its_blocks_for_the_others(store: MemoryStore) -> None:
    n = put_network(store, net(subnets=["10.5.0.0/24"]))
    h1, h2 = Ipam(store, node="h1"), Ipam(store, node="h2")
    h1.allocate(n, "a")
    h2.allocate(n, "b")
    for i in range(63):
        h2.allocate(n, f"b{i}")  # h2 takes a second block
    store.put(CLUSTER_KNOWN + "h2", b"{}")  # h2 was a member, its agent is gone
    remove_node(store, "h2", local="h1")
    assert owners(store) == {"10.5.0.0/26": "h1"}
    # Its addresses, held by no container record here, stay taken: h1 steps over them.
    assert h1.allocate(n, "next") == ip("10.5.0.3")
