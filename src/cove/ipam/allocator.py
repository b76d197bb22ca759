"""Endpoint address allocation over the store.

An allocation is the key ``ipam/<network>/<address>`` holding its owner. It is
created with a compare-and-swap on the key's absence and on the network's
existence, so two concurrent requests can never get the same address, even
from two agents sharing one etcd, and an address can never be handed out on a
network that is being removed.
"""

from __future__ import annotations

import json
import logging
from typing import Literal

from cove.errors import CasFailed, Conflict, InvalidArgument, NotFound
from cove.ipam import pool
from cove.model import IPAM, NETWORKS, IPAddress, Network, Subnet
from cove.store.base import Compare, Delete, Put, Store

log = logging.getLogger(__name__)

_MAX_ATTEMPTS = 64
_PARSED_MAX = 1 << 16  # parsed key texts kept (they never change meaning)


def ipam_key(network: str, address: IPAddress) -> str:
    return f"{IPAM}{network}/{address}"


class Ipam:
    """Allocates and releases endpoint addresses. Thread-safe (the store is)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._parsed: dict[str, IPAddress] = {}  # key text -> address

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
        for attempt in range(_MAX_ATTEMPTS):
            taken = self._taken(network.name)
            # After a lost race, step over a few free addresses so that many
            # concurrent allocators do not keep colliding on the same one.
            candidate = pool.first_free(
                subnet.cidr, subnet.gateway, taken, subnet.ip_range, skip=min(attempt, 8)
            )
            result = self._store.txn(
                [Compare.present(net_key), Compare.absent(ipam_key(network.name, candidate))],
                [Put(ipam_key(network.name, candidate), value)],
            )
            if result.succeeded:
                return candidate
            if self._store.get(net_key) is None:
                raise NotFound(f"network {network.name} not found", network=network.name)
        raise CasFailed(f"could not allocate an address on {network.name}: too much contention")

    def release(self, network: str, address: IPAddress) -> None:
        self._store.delete(ipam_key(network, address))

    def release_owner(self, network: str, owner: str) -> list[IPAddress]:
        """Release every address ``owner`` holds on ``network``."""
        mine = [
            kv.key for kv in self._store.range(f"{IPAM}{network}/").kvs if _owner(kv.value) == owner
        ]
        if mine:
            self._store.txn([], [Delete(k) for k in mine])
        return [pool.parse_address(k.rsplit("/", 1)[1]) for k in mine]

    def allocations(self, network: str) -> dict[IPAddress, str]:
        """Address -> owner, for every allocation on ``network``."""
        out: dict[IPAddress, str] = {}
        for kv in self._store.range(f"{IPAM}{network}/").kvs:
            out[pool.parse_address(kv.key.rsplit("/", 1)[1])] = _owner(kv.value)
        return out

    def _taken(self, network: str) -> set[IPAddress]:
        # Runs on every allocation, over every allocation of the network:
        # the keys alone (no owner to decode), each parsed once (parsing
        # 200 addresses costs about 2 ms).
        if len(self._parsed) > _PARSED_MAX:
            self._parsed.clear()
        out: set[IPAddress] = set()
        for kv in self._store.range(f"{IPAM}{network}/").kvs:
            text = kv.key.rsplit("/", 1)[1]
            addr = self._parsed.get(text)
            if addr is None:
                addr = self._parsed[text] = pool.parse_address(text)
            out.add(addr)
        return out

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


def _owner(raw: bytes) -> str:
    try:
        return str(json.loads(raw).get("owner", ""))
    except (ValueError, AttributeError):
        return ""
