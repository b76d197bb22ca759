"""Per-node address blocks (Calico's block affinity): pure arithmetic and keys.

A network's subnet is cut into blocks: an IPv4 /26 (64 addresses) or an
IPv6 /122 (64 addresses), or the whole subnet when it is no bigger than a
block. A node claims a block for itself by creating
``ipamblocks/<network>/<block network address>`` holding
``{"node": ..., "cidr": ...}`` with a compare-and-swap, and then allocates
its containers' addresses there, so hosts allocating at the same moment do
not contend on the same addresses (and each host's writes touch its own
blocks). The blocks are an affinity, not a lease: the per-address record
``ipam/<network>/<address>`` is still what makes an address taken, so an
address another host borrowed from a block, or a static ``--ip`` inside
it, is never handed out twice.

The prefix is a top-level one, not under ``ipam/``, where a network named
"blocks" would collide with the blocks of every network.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

from cove.errors import IpamExhausted
from cove.ipam import pool
from cove.model import IPAM_BLOCKS, IPAddress, IPNetwork

BLOCK_PREFIX = {4: 26, 6: 122}


@dataclass(frozen=True, slots=True)
class Block:
    """A block and the node it belongs to."""

    cidr: IPNetwork
    node: str

    def to_json(self) -> dict[str, str]:
        return {"cidr": str(self.cidr), "node": self.node}


def blocks_prefix(network: str) -> str:
    """Where the blocks of ``network`` are kept (trailing "/": the blocks of
    "web" are not those of "web2")."""
    return f"{IPAM_BLOCKS}{network}/"


def block_key(network: str, block: IPNetwork) -> str:
    return f"{blocks_prefix(network)}{block.network_address}"


def encode(node: str, block: IPNetwork) -> bytes:
    return json.dumps({"node": node, "cidr": str(block)}, sort_keys=True).encode()


def decode(key: str, value: bytes) -> Block | None:
    """The block a record holds; None for a record that is not one (never
    trusted to name a block other than its key's)."""
    try:
        data = json.loads(value)
        cidr = ipaddress.ip_network(str(data["cidr"]))
        node = str(data["node"])
    except (ValueError, KeyError, TypeError):
        return None
    if str(cidr.network_address) != key.rsplit("/", 1)[-1]:
        return None
    return Block(cidr, node)


def block_prefixlen(subnet: IPNetwork) -> int:
    return max(subnet.prefixlen, BLOCK_PREFIX[subnet.version])


def block_of(subnet: IPNetwork, address: IPAddress) -> IPNetwork:
    """The block of ``subnet`` that holds ``address`` (inside the subnet)."""
    cls = ipaddress.IPv4Network if subnet.version == 4 else ipaddress.IPv6Network
    return cls((address, block_prefixlen(subnet)), strict=False)


def candidate_blocks(subnet: IPNetwork, ip_range: IPNetwork | None = None) -> Iterator[IPNetwork]:
    """The blocks of ``subnet`` that hold an address of ``ip_range`` (all of
    them without one), lowest first; lazily, since a /64 has 2^58."""
    span = ip_range if ip_range is not None else subnet
    prefixlen = block_prefixlen(subnet)
    if span.prefixlen >= prefixlen:
        yield block_of(subnet, span.network_address)
        return
    yield from span.subnets(new_prefix=prefixlen)


def first_free_in(
    blocks: Iterable[IPNetwork],
    subnet: IPNetwork,
    gateway: IPAddress,
    taken: Collection[IPAddress],
    ip_range: IPNetwork | None = None,
    skip: int = 0,
) -> IPAddress:
    """The lowest free address of ``blocks`` (walked in the order given),
    after ``skip`` free ones when there are that many (else the lowest), so
    that allocators that lost a race spread out. Raises ``IpamExhausted``
    when the blocks have no free address."""
    got = _first_free(blocks, subnet, _blocked(subnet, gateway, taken), ip_range, skip)
    if got is None:
        raise IpamExhausted(f"no free IPv{subnet.version} address in the blocks", subnet=subnet)
    return got


def _blocked(subnet: IPNetwork, gateway: IPAddress, taken: Collection[IPAddress]) -> set[int]:
    # Integers, not address objects (see pool.first_free).
    out = {int(a) for a in taken if a.version == subnet.version}
    out.update(int(a) for a in pool.reserved(subnet, gateway))
    return out


def _first_free(
    blocks: Iterable[IPNetwork],
    subnet: IPNetwork,
    blocked: set[int],
    ip_range: IPNetwork | None,
    skip: int,
) -> IPAddress | None:
    span = ip_range if ip_range is not None else subnet
    cls = ipaddress.IPv4Address if subnet.version == 4 else ipaddress.IPv6Address
    first: int | None = None
    seen = 0
    for block in blocks:
        lo = max(int(block.network_address), int(span.network_address))
        hi = min(int(block.broadcast_address), int(span.broadcast_address))
        for value in range(lo, hi + 1):
            if value in blocked:
                continue
            if first is None:
                first = value
            if seen == skip:
                return cls(value)
            seen += 1
    return None if first is None else cls(first)


def unclaimed(
    subnet: IPNetwork,
    gateway: IPAddress,
    claimed: Collection[IPNetwork],
    taken: Collection[IPAddress],
    ip_range: IPNetwork | None = None,
) -> Iterator[IPNetwork]:
    """The blocks no node has claimed and that have a free address, lowest
    first. Lazily, and cheap: every block skipped is claimed or full, so
    the walk is bounded by the records, not by the size of the subnet."""
    blocked = _blocked(subnet, gateway, taken)
    for block in candidate_blocks(subnet, ip_range):
        if block not in claimed and _first_free([block], subnet, blocked, ip_range, 0) is not None:
            yield block
