"""Endpoint address allocation over the store.

An allocation is the key ``ipam/<network>/<address>`` holding its owner. It is
created with a compare-and-swap on the key's absence and on the network's
existence, so two concurrent requests can never get the same address, even
from two agents sharing one etcd, and an address can never be handed out on a
network that is being removed.

Which address to try is decided from ``reads``: in the agent, the hub's
in-memory copy of the ``ipam/`` prefix, so an allocation no longer reads
every address of the network from etcd (with 500 containers in a network
that read was most of what a container start cost the starting host). That
copy runs a few milliseconds behind the store; the compare-and-swap above
is what keeps addresses unique, a candidate the copy thought free and the
store says is taken is remembered and another is tried, and after a few
lost races the candidate comes from the store itself. Addresses this
allocator created or found taken are remembered until the copy has caught
up with them, so a burst of starts on one host does not keep trying the
address it just handed out.

Which addresses a node tries first: those of its own blocks (see
``cove.ipam.blocks``: Calico's block affinity). A dynamic allocation on
node N takes the lowest free address of N's blocks; when they are full, N
claims the lowest unclaimed block (a compare-and-swap create: on a lost
race, the next) and allocates there; when every block is claimed, it
borrows the lowest free address of the whole subnet, so a small subnet
shared by many hosts still fills up. Hosts allocating at once so work in
different blocks instead of racing for the same lowest addresses. Blocks
stay with their node while empty; they go with the network or the node
(``cove members rm``).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Literal

from cove.errors import CasFailed, Conflict, InvalidArgument, IpamExhausted, NotFound
from cove.ipam import blocks, pool
from cove.model import IPAM, NETWORKS, IPAddress, IPNetwork, Network, Subnet
from cove.store.base import Compare, Delete, Put, Store

log = logging.getLogger(__name__)

_MAX_ATTEMPTS = 64
_CACHED_ATTEMPTS = 8  # lost races decided from ``reads`` before reading the store
_PENDING_MAX = 4096  # remembered addresses per network (a stuck copy cannot grow it)
_PARSED_MAX = 1 << 16  # parsed key texts kept (they never change meaning)


def ipam_key(network: str, address: IPAddress) -> str:
    return f"{IPAM}{network}/{address}"


class Ipam:
    """Allocates and releases endpoint addresses. Thread-safe (the store is)."""

    def __init__(self, store: Store, reads: Store | None = None, *, node: str = "") -> None:
        """``reads``: where candidates (and the blocks' owners) are chosen
        from (a lagging copy of the store is fine, see the module
        docstring); the store by default. ``node``: the node whose blocks
        this allocator fills; without one (a tool or a test with a single
        allocator), no blocks: the lowest free address of the subnet."""
        self._store = store
        self._reads = reads if reads is not None else store
        self._node = node
        # network -> block -> (ours, store revision at which it was known claimed)
        self._claims: dict[str, dict[IPNetwork, tuple[bool, int]]] = {}
        self._parsed: dict[str, IPAddress] = {}  # key text -> address
        self._lock = threading.Lock()
        # network -> address -> store revision at which it was known taken
        self._pending: dict[str, dict[IPAddress, int]] = {}
        # network -> addresses a thread of this allocator is trying right now,
        # so that a burst of starts on one host tries different addresses
        self._trying: dict[str, set[IPAddress]] = {}

    def allocate(
        self,
        network: Network,
        owner: str,
        family: Literal[4, 6] = 4,
        requested: IPAddress | None = None,
    ) -> IPAddress:
        """Reserve an address for ``owner`` on ``network``: ``requested`` if
        given, else the lowest free one.

        Raises ``InvalidArgument`` (no subnet of that family, address outside
        the subnet or reserved), ``Conflict`` (requested address taken),
        ``IpamExhausted`` (none left) and ``NotFound`` (network removed).
        """
        subnet = self._subnet(network, family)
        value = json.dumps({"owner": owner}).encode()
        net_key = NETWORKS + network.name
        if requested is not None:
            pool.check_requested(subnet.cidr, subnet.gateway, requested, network.name)
            result = self._store.txn(
                [Compare.present(net_key), Compare.absent(ipam_key(network.name, requested))],
                [Put(ipam_key(network.name, requested), value)],
            )
            if not result.succeeded:
                self._raise_for(network.name, requested)
            return requested
        from_store = self._reads is self._store
        for attempt in range(_MAX_ATTEMPTS):
            from_store = from_store or attempt >= _CACHED_ATTEMPTS
            source = self._store if from_store else self._reads
            taken = self._taken(source, network.name)
            try:
                candidate = self._try(network.name, subnet, source, taken, attempt)
            except IpamExhausted:
                if from_store:
                    raise
                from_store = True  # the copy may not show a release yet: ask the store
                continue
            try:
                result = self._store.txn(
                    [Compare.present(net_key), Compare.absent(ipam_key(network.name, candidate))],
                    [Put(ipam_key(network.name, candidate), value)],
                )
            finally:
                with self._lock:
                    trying = self._trying[network.name]
                    trying.discard(candidate)
                    if not trying:
                        del self._trying[network.name]
            # Taken as of ``result.revision`` either way: ours, or someone's.
            self._remember(network.name, candidate, result.revision)
            if result.succeeded:
                return candidate
            if self._store.get(net_key) is None:
                raise NotFound(f"network {network.name} not found", network=network.name)
        raise CasFailed(f"could not allocate an address on {network.name}: too much contention")

    def _try(
        self, network: str, subnet: Subnet, source: Store, taken: set[IPAddress], attempt: int
    ) -> IPAddress:
        """The address to try, marked as being tried by this allocator (the
        caller unmarks it): one another thread is trying is taken."""
        while True:
            with self._lock:
                taken.update(self._trying.get(network, ()))
            candidate = self._choose(network, subnet, source, taken, attempt)
            with self._lock:
                trying = self._trying.setdefault(network, set())
                if candidate not in trying:
                    trying.add(candidate)
                    return candidate
            taken.add(candidate)

    def _choose(
        self, network: str, subnet: Subnet, source: Store, taken: set[IPAddress], attempt: int
    ) -> IPAddress:
        """The address to try: in this node's blocks, else in a block it
        claims now, else borrowed from anywhere in the subnet."""
        if not self._node:
            return _candidate(subnet, taken, attempt)
        mine, claimed = self._blocks(source, network, subnet.cidr)
        try:
            return blocks.first_free_in(
                mine, subnet.cidr, subnet.gateway, taken, subnet.ip_range, skip=min(attempt, 8)
            )
        except IpamExhausted:
            pass
        for block in blocks.unclaimed(subnet.cidr, subnet.gateway, claimed, taken, subnet.ip_range):
            if self._claim(network, block):
                return blocks.first_free_in(
                    [block], subnet.cidr, subnet.gateway, taken, subnet.ip_range
                )
        return _candidate(subnet, taken, attempt)

    def _blocks(
        self, source: Store, network: str, subnet: IPNetwork
    ) -> tuple[list[IPNetwork], set[IPNetwork]]:
        """This node's blocks of ``subnet`` (lowest first), and every claimed one."""
        read = source.range(blocks.blocks_prefix(network))
        found: dict[IPNetwork, bool] = {}
        for kv in read.kvs:
            block = blocks.decode(kv.key, kv.value)
            if block is not None:
                found[block.cidr] = block.node == self._node
        with self._lock:
            known = self._claims.get(network)
            if known:
                # What the read reflects needs no remembering any more.
                for cidr in [c for c, (_, rev) in known.items() if rev <= read.revision]:
                    del known[cidr]
                for cidr, (ours, _) in known.items():
                    found[cidr] = ours
        inside = {
            c: ours
            for c, ours in found.items()
            if c.version == subnet.version and c.subnet_of(subnet)  # type: ignore[arg-type]
        }
        return sorted(c for c, ours in inside.items() if ours), set(inside)

    def _claim(self, network: str, block: IPNetwork) -> bool:
        """Claim ``block`` for this node: True when it is this node's now
        (claimed here, or a moment ago by another thread of this agent)."""
        key = blocks.block_key(network, block)
        result = self._store.txn(
            [Compare.present(NETWORKS + network), Compare.absent(key)],
            [Put(key, blocks.encode(self._node, block))],
        )
        ours = result.succeeded
        if not ours:
            kv = self._store.get(key)
            if kv is None:
                if self._store.get(NETWORKS + network) is None:
                    raise NotFound(f"network {network} not found", network=network)
                return False  # claimed and gone again: the next block
            found = blocks.decode(kv.key, kv.value)
            ours = found is not None and found.node == self._node
        else:
            log.info("network %s: node %s claimed block %s", network, self._node, block)
        with self._lock:
            self._claims.setdefault(network, {})[block] = (ours, result.revision)
        return ours

    def release(self, network: str, address: IPAddress) -> None:
        self._store.delete(ipam_key(network, address))
        self._forget(network, [address])

    def release_owner(self, network: str, owner: str) -> list[IPAddress]:
        """Release every address ``owner`` holds on ``network``."""
        mine = [
            kv.key for kv in self._store.range(f"{IPAM}{network}/").kvs if _owner(kv.value) == owner
        ]
        if mine:
            self._store.txn([], [Delete(k) for k in mine])
        released = [pool.parse_address(k.rsplit("/", 1)[1]) for k in mine]
        self._forget(network, released)
        return released

    def allocations(self, network: str) -> dict[IPAddress, str]:
        """Address -> owner, for every allocation on ``network``."""
        out: dict[IPAddress, str] = {}
        for kv in self._store.range(f"{IPAM}{network}/").kvs:
            out[pool.parse_address(kv.key.rsplit("/", 1)[1])] = _owner(kv.value)
        return out

    def _taken(self, source: Store, network: str) -> set[IPAddress]:
        # Runs on every allocation, over every allocation of the network
        # (in memory when ``source`` is the hub's copy): the keys alone (no
        # owner to decode), each parsed once (parsing 200 addresses costs
        # about 2 ms); plus what this allocator knows is taken and the read
        # may not show yet.
        if len(self._parsed) > _PARSED_MAX:
            self._parsed.clear()
        read = source.range(f"{IPAM}{network}/")
        out: set[IPAddress] = set()
        for kv in read.kvs:
            text = kv.key.rsplit("/", 1)[1]
            addr = self._parsed.get(text)
            if addr is None:
                addr = self._parsed[text] = pool.parse_address(text)
            out.add(addr)
        with self._lock:
            pending = self._pending.get(network)
            if pending:
                # What the read reflects needs no remembering any more.
                for addr in [a for a, rev in pending.items() if rev <= read.revision]:
                    del pending[addr]
                out.update(pending)
        return out

    def _remember(self, network: str, address: IPAddress, revision: int) -> None:
        with self._lock:
            pending = self._pending.setdefault(network, {})
            if len(pending) >= _PENDING_MAX:
                pending.clear()  # the copy is stuck; the store read is the fallback
            pending[address] = revision

    def _forget(self, network: str, addresses: list[IPAddress]) -> None:
        with self._lock:
            pending = self._pending.get(network)
            if pending is None:
                return
            for addr in addresses:
                pending.pop(addr, None)
            if not pending:
                del self._pending[network]

    @staticmethod
    def _subnet(network: Network, family: int) -> Subnet:
        subnet = network.ipv4 if family == 4 else network.ipv6
        if subnet is None:
            raise InvalidArgument(
                f"network {network.name} has no IPv{family} subnet", network=network.name
            )
        return subnet

    def _raise_for(self, network: str, address: IPAddress) -> None:
        if self._store.get(NETWORKS + network) is None:
            raise NotFound(f"network {network} not found", network=network)
        raise Conflict(f"address {address} is already in use on network {network}", address=address)


def _candidate(subnet: Subnet, taken: set[IPAddress], attempt: int) -> IPAddress:
    """The lowest free address; after a lost race, one a few free addresses
    further on, so that many concurrent allocators do not keep colliding on
    the same one (the lowest when fewer are free)."""
    skip = min(attempt, 8)
    try:
        return pool.first_free(subnet.cidr, subnet.gateway, taken, subnet.ip_range, skip=skip)
    except IpamExhausted:
        if skip == 0:
            raise
        return pool.first_free(subnet.cidr, subnet.gateway, taken, subnet.ip_range)


def _owner(raw: bytes) -> str:
    try:
        return str(json.loads(raw).get("owner", ""))
    except (ValueError, AttributeError):
        return ""
