"""Pure address arithmetic: which addresses are reserved, which is free next,
and which subnet a new network gets. No I/O; the allocator feeds it."""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Collection, Iterable, Iterator

from cove.errors import InvalidArgument, IpamExhausted
from cove.model import IPAddress, IPNetwork

DEFAULT_POOLS_V4: tuple[str, ...] = ("10.89.0.0/16", "10.90.0.0/15")
DEFAULT_PREFIX_V4 = 24
DEFAULT_POOLS_V6: tuple[str, ...] = ("fdc0:7e00::/48",)
DEFAULT_PREFIX_V6 = 64

MIN_PREFIX = {4: 8, 6: 16}
MAX_PREFIX = {4: 30, 6: 124}


def parse_subnet(text: str) -> IPNetwork:
    """A subnet given by a user. Raises ``InvalidArgument`` naming the problem."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise InvalidArgument(f"invalid subnet {text!r}: {exc}", subnet=text) from exc
    lo, hi = MIN_PREFIX[net.version], MAX_PREFIX[net.version]
    if not lo <= net.prefixlen <= hi:
        raise InvalidArgument(
            f"subnet {text} has prefix length /{net.prefixlen}; IPv{net.version} "
            f"subnets must be between /{lo} and /{hi}",
            subnet=text,
        )
    return net


def parse_address(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError as exc:
        raise InvalidArgument(f"invalid IP address {text!r}", address=text) from exc


def reserved(subnet: IPNetwork, gateway: IPAddress) -> frozenset[IPAddress]:
    """Addresses never handed out: the network address, the gateway and (IPv4)
    the broadcast address."""
    out: set[IPAddress] = {subnet.network_address, gateway}
    if subnet.version == 4:
        out.add(subnet.broadcast_address)
    return frozenset(out)


def default_gateway(subnet: IPNetwork) -> IPAddress:
    """The first usable address, as Docker and podman choose it."""
    return subnet.network_address + 1


def check_gateway(subnet: IPNetwork, gateway: IPAddress) -> None:
    if gateway.version != subnet.version or gateway not in subnet:
        raise InvalidArgument(f"gateway {gateway} is outside subnet {subnet}", gateway=gateway)
    if gateway == subnet.network_address or (
        subnet.version == 4 and gateway == subnet.broadcast_address
    ):
        raise InvalidArgument(
            f"gateway {gateway} is the network or broadcast address of {subnet}", gateway=gateway
        )


def check_requested(
    subnet: IPNetwork, gateway: IPAddress, address: IPAddress, network_name: str
) -> None:
    """A static address must be a usable host address of the subnet."""
    if address.version != subnet.version or address not in subnet:
        raise InvalidArgument(
            f"address {address} is outside subnet {subnet} of network {network_name}",
            address=address,
        )
    if address in reserved(subnet, gateway):
        raise InvalidArgument(
            f"address {address} is reserved on network {network_name} "
            "(network, gateway or broadcast address)",
            address=address,
        )


def first_free(
    subnet: IPNetwork,
    gateway: IPAddress,
    taken: Collection[IPAddress],
    ip_range: IPNetwork | None = None,
    skip: int = 0,
) -> IPAddress:
    """The lowest free address (after ``skip`` free ones, which lets callers
    that lost a race spread out). Cost is bounded by ``len(taken) + skip``,
    not by the size of the subnet, so a /64 is as cheap as a /24."""
    span = ip_range if ip_range is not None else subnet
    # Integers, not address objects: building one costs microseconds, and
    # this walks past every taken address on every allocation.
    blocked = {int(a) for a in reserved(subnet, gateway)}
    blocked.update(int(a) for a in taken if a.version == subnet.version)
    cls = ipaddress.IPv4Address if span.version == 4 else ipaddress.IPv6Address
    seen = 0
    for value in range(int(span.network_address), int(span.broadcast_address) + 1):
        if value in blocked:
            continue
        if seen == skip:
            return cls(value)
        seen += 1
    raise IpamExhausted(
        f"no free IPv{subnet.version} address left in {span}", subnet=subnet, range=span
    )


def choose_subnet(
    pools: Iterable[IPNetwork], prefixlen: int, used: Iterable[IPNetwork]
) -> IPNetwork:
    """The first ``/prefixlen`` of the pools that overlaps nothing in ``used``
    (other cove networks, host routes and host addresses)."""
    used_list = list(used)
    for pool in pools:
        if prefixlen < pool.prefixlen:
            continue
        # Bounded: a /48 pool of /64s has 65,536 candidates; never walk more.
        candidates: Iterator[IPNetwork] = pool.subnets(new_prefix=prefixlen)
        for candidate in itertools.islice(candidates, 1 << 16):
            if overlapping(candidate, used_list) is None:
                return candidate
    raise IpamExhausted(
        f"the default address pools have no free /{prefixlen} left; pass --subnet explicitly"
    )


def overlapping(candidate: IPNetwork, others: Iterable[IPNetwork]) -> IPNetwork | None:
    for other in others:
        if other.version == candidate.version and candidate.overlaps(other):
            return other
    return None
