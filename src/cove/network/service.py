"""Networks as the store holds them: create, inspect, list, remove, prune.

Every change is one store transaction. The kernel follows through the
reconciler, never through this module.
"""

from __future__ import annotations

import builtins
import json
import logging
from collections.abc import Callable, Sequence

from cove import naming
from cove.clock import Clock
from cove.errors import AlreadyExists, Conflict, InUse, NotFound
from cove.ipam import blocks as ipam_blocks
from cove.model import IPAM, NETWORKS, Endpoint, IPNetwork, Network, endpoints_in
from cove.network.spec import NetworkSpec, build_network, check_name
from cove.store.base import Compare, Delete, Put, Store

log = logging.getLogger(__name__)

# Bumped by every network create and remove, so that two concurrent creates
# cannot both pick (or both be given) overlapping subnets.
SUBNETS_GUARD = "meta/networks"
_ATTEMPTS = 32


class NetworkService:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        host_networks: Callable[[], Sequence[IPNetwork]] = tuple,
        reserved: Sequence[IPNetwork] = (),
    ) -> None:
        self._reserved = tuple(reserved)
        self._store = store
        self._clock = clock
        self._host_networks = host_networks

    def create(self, spec: NetworkSpec) -> tuple[Network, int]:
        """Validate and store a new network; returns it and the revision of
        the write. Raises ``InvalidArgument``, ``AlreadyExists``,
        ``Conflict`` (overlap) or ``IpamExhausted``; nothing is written then."""
        check_name(spec.name)
        key = NETWORKS + spec.name
        for _ in range(_ATTEMPTS):
            guard = self._store.get(SUBNETS_GUARD)
            guard_rev = guard.mod_revision if guard else 0
            existing = self.list()
            if any(n.name == spec.name for n in existing):
                raise AlreadyExists(f"network {spec.name} already exists", network=spec.name)
            taken = [(n.name, s.cidr) for n in existing for s in n.subnets]
            vnis = {n.vni: n.name for n in existing if n.vni is not None}
            network = build_network(
                spec,
                taken,
                self._host_networks(),
                self._clock.time(),
                reserved=self._reserved,
                vnis=vnis,
            )
            result = self._store.txn(
                [Compare.absent(key), Compare.mod_is(SUBNETS_GUARD, guard_rev)],
                [Put(key, _encode(network)), Put(SUBNETS_GUARD, b"{}")],
            )
            if result.succeeded:
                log.info("network %s created: %s", network.name, network.subnets)
                return network, result.revision
        raise Conflict(f"network {spec.name} could not be created: too many concurrent changes")

    def get(self, ref: str) -> Network:
        """The network ``ref`` means: a name, a full ID or a unique ID prefix
        (``NotFound``; ``Conflict`` listing the matches when ambiguous)."""
        kv = self._store.get(NETWORKS + ref) if ref else None
        if kv is not None:
            return Network.from_json(json.loads(kv.value))
        nets = self.list()
        name = naming.resolve(ref, ((n.name, n.id) for n in nets), "network")
        return next(n for n in nets if n.name == name)

    def exists(self, name: str) -> bool:
        return self._store.get(NETWORKS + name) is not None

    def list(self) -> builtins.list[Network]:
        return [Network.from_json(json.loads(kv.value)) for kv in self._store.range(NETWORKS).kvs]

    def endpoints(self, name: str) -> builtins.list[Endpoint]:
        """The endpoints on network ``name``, by node then id (none for an
        unknown network)."""
        kvs = self._store.range(endpoints_in(name)).kvs
        return [Endpoint.from_json(json.loads(kv.value)) for kv in kvs]

    def blocks(self, name: str) -> builtins.list[ipam_blocks.Block]:
        """The address blocks of network ``name`` and their nodes, lowest first."""
        kvs = self._store.range(ipam_blocks.blocks_prefix(name)).kvs
        found = [b for kv in kvs if (b := ipam_blocks.decode(kv.key, kv.value)) is not None]
        return sorted(found, key=lambda b: (b.cidr.version, b.cidr))

    def endpoints_of(self, name: str) -> builtins.list[str]:
        # The id is the key's last segment (endpoints/<net>/<node>/<id>).
        return [kv.key.rsplit("/", 1)[1] for kv in self._store.range(endpoints_in(name)).kvs]

    def remove(self, ref: str) -> int:
        """Remove a network that has no endpoints; returns the revision.
        Raises ``NotFound`` or ``InUse``."""
        name = self.get(ref).name
        for _ in range(_ATTEMPTS):
            kv = self._store.get(NETWORKS + name)
            if kv is None:
                raise NotFound(f"network {name} not found", network=name)
            users = self.endpoints_of(name)
            if users:
                raise InUse(
                    f"network {name} has {len(users)} active endpoint(s); "
                    "disconnect or remove its containers first",
                    network=name,
                )
            result = self._store.txn(
                [Compare.mod_is(NETWORKS + name, kv.mod_revision)],
                [
                    Delete(NETWORKS + name),
                    Delete(f"{IPAM}{name}/", prefix=True),
                    Delete(ipam_blocks.blocks_prefix(name), prefix=True),
                    Put(SUBNETS_GUARD, b"{}"),
                ],
            )
            if result.succeeded:
                log.info("network %s removed", name)
                return result.revision
        raise Conflict(f"network {name} is changing too fast to remove", network=name)

    def prune(
        self, keep: Callable[[Network], bool] = lambda _: False
    ) -> tuple[builtins.list[str], int]:
        """Remove every network without endpoints (and for which ``keep`` is
        false: a ``--filter``); returns their names and the last revision
        written."""
        removed: list[str] = []
        revision = self._store.revision
        for network in self.list():
            if keep(network) or self.endpoints_of(network.name):
                continue
            try:
                revision = self.remove(network.name)
            except (InUse, NotFound):
                continue
            removed.append(network.name)
        return removed, revision


def _encode(network: Network) -> bytes:
    return json.dumps(network.to_json(), sort_keys=True).encode()
