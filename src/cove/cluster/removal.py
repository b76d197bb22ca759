"""Removing a dead node for good (``cove members rm NODE``; Consul's
``force-leave -prune``, Swarm's ``docker node rm``).

A node whose agent never returns keeps, in the shared store, everything it
owned: its containers' records and process states, their endpoints (so
other hosts keep FDB and neighbour entries and DNS names for them), their
IPAM addresses and host-port claims, its CNI attachments, its services and
checks in the catalog, its pending requests, its layout mark and its node
records. ``remove`` deletes all of it.

Safety against the node coming back while it runs: every transaction
compares the node's live record (``cluster/nodes/<name>``) with what it was
when the removal began, absent for a dead node. Once the node's agent has
joined again, no further deletion can happen; what was removed before is
gone for it too, and its agent treats the processes of those containers as
orphans (``cove.runtime``'s adoption stops and removes what the store no
longer has). Each transaction is bounded (``MAX_OPS`` operations; etcd
refuses more than 128 by default), and each container goes in one
transaction of its own with its endpoints, addresses, claims and state,
so no container is ever left half-removed.

``force`` removes a live node too: its lease is revoked at the end, so the
node's serfHealth goes with it and its agent, when it notices, joins again
with nothing (and stops its now orphaned containers).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cove.cluster.nodes import CLUSTER_KNOWN, CLUSTER_NODES
from cove.cluster.requests import requests_prefix
from cove.errors import Conflict, CoveError, InvalidArgument, NotFound
from cove.model import CONTAINERS, ENDPOINTS, IPAM, IPAM_BLOCKS
from cove.registry.keys import AGENT, CHECKS, COORDS, NODE_CHECKS, SERVICES, node_key, seg
from cove.runtime.keys import (
    CLUSTER_STATUS,
    containers_of,
    is_legacy,
    layout_key,
    name_key,
    status_key,
    statuses_of,
)
from cove.runtime.spec import PORTS
from cove.store.base import Compare, Delete, KeyValue, Op, Store

log = logging.getLogger(__name__)

# Operations per transaction: under etcd's default --max-txn-ops (128),
# with room for the compares.
MAX_OPS = 100

_ATTEMPTS = 5  # reads of a container that keeps changing under the removal
_Records = tuple[
    list[tuple[KeyValue, dict[str, Any]]],  # endpoints
    list[tuple[KeyValue, dict[str, Any]]],  # IPAM addresses
    list[tuple[KeyValue, dict[str, Any]]],  # host-port claims
]

CNI = "cni/"  # as cove.cni.attachments.CNI (which pulls in the whole CNI part)


@dataclass(slots=True)
class Removed:
    """What ``remove`` deleted, for the CLI and the API."""

    node: str
    containers: list[str] = field(default_factory=list)
    endpoints: int = 0
    addresses: int = 0
    ports: int = 0
    services: int = 0
    checks: int = 0
    transactions: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "containers": sorted(self.containers),
            "endpoints": self.endpoints,
            "addresses": self.addresses,
            "ports": self.ports,
            "services": self.services,
            "checks": self.checks,
            "transactions": self.transactions,
        }


def _json(kv: KeyValue) -> dict[str, Any]:
    try:
        data = json.loads(kv.value)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class NodeRemoval:
    """One removal of node ``name``; ``run`` does it (see the module)."""

    def __init__(self, store: Store, name: str, *, force: bool = False) -> None:
        self._store = store
        self.name = name
        self._force = force
        self._guard: Compare = Compare.absent(CLUSTER_NODES + name)
        self._live_revision = 0  # of the live record a forced removal began with
        self._lease = 0
        self.result = Removed(name)

    def run(self) -> Removed:
        """``Conflict`` for a live node without ``force`` (nothing changed),
        or when the node's agent joined again meanwhile (what was removed
        until then stays removed); ``NotFound`` for a node never seen."""
        name = self.name
        live = self._store.get(CLUSTER_NODES + name)
        if live is not None:
            if not self._force:
                raise Conflict(
                    f"node {name} is alive (its agent keeps its lease): stop the agent on"
                    f" {name} first and remove it once it shows as failed or left in"
                    " `cove members`, or use --force to remove a live node",
                    node=name,
                )
            self._guard = Compare.mod_is(live.key, live.mod_revision)
            self._live_revision = live.mod_revision
            self._lease = live.lease
        containers = [(kv, _json(kv)) for kv in self._store.range(containers_of(name)).kvs]
        containers += self._legacy(CONTAINERS)
        known = self._store.get(CLUSTER_KNOWN + name)
        if live is None and known is None and not containers and not self._registered():
            raise NotFound(f"no node named {name!r} (see cove members)", node=name)
        log.info("removing node %s (%s containers)", name, len(containers))
        self._remove_containers(containers)
        self._remove_leftovers({str(d.get("id")) for _, d in containers})
        self._remove_registry()
        last: list[Op] = [
            Delete(requests_prefix(name), prefix=True),
            # Its layout mark: a node of that name joining later starts by
            # moving whatever of its records it finds in an older layout.
            Delete(layout_key(name)),
            Delete(CLUSTER_KNOWN + name),
            Delete(CLUSTER_NODES + name),
        ]
        self._commit(last)
        if self._lease:
            # A forced removal: end the live agent's lease (and with it its
            # serfHealth); it joins again on its next renewal.
            try:
                self._store.lease_revoke(self._lease)
            except CoveError as exc:
                log.warning("node %s: cannot revoke its lease: %s", name, exc.message)
        log.info("node %s removed: %s", name, self.result.to_json())
        return self.result

    def _registered(self) -> bool:
        return self._store.get(node_key(self.name)) is not None

    def _commit(self, ops: Sequence[Op], extra: Sequence[Compare] = ()) -> bool:
        """One guarded transaction; ``Conflict`` when the node came back."""
        if not ops:
            return True
        result = self._store.txn([self._guard, *extra], ops)
        if result.succeeded:
            self.result.transactions += 1
            return True
        if not self._guard_holds():
            raise Conflict(
                f"node {self.name} joined the cluster again while it was being removed:"
                f" its agent is back and keeps what was not removed yet"
                f" ({len(self.result.containers)} containers were removed)",
                node=self.name,
            )
        return False

    def _guard_holds(self) -> bool:
        kv = self._store.get(CLUSTER_NODES + self.name)
        return (kv.mod_revision if kv is not None else 0) == self._live_revision

    def _chunks(self, ops: Iterable[Op]) -> None:
        batch: list[Op] = []
        for op in ops:
            batch.append(op)
            if len(batch) >= MAX_OPS:
                self._commit(batch)
                batch = []
        self._commit(batch)

    # -- containers ----------------------------------------------------------

    def _remove_containers(self, containers: list[tuple[KeyValue, dict[str, Any]]]) -> None:
        if not containers:
            return
        records = self._records()
        for kv, data in containers:
            for _ in range(_ATTEMPTS):
                if self._remove_container(kv, data, records):
                    break
                # Changed meanwhile (connected from another host, say):
                # read it and the records again.
                fresh = self._store.get(kv.key)
                if fresh is None:
                    break  # removed meanwhile
                kv, data = fresh, _json(fresh)
                if data.get("node") != self.name:
                    break  # not the node's any more
                records = self._records()
            else:
                raise Conflict(
                    f"container {data.get('name')} of node {self.name} keeps changing:"
                    " run the removal again",
                    node=self.name,
                )

    def _legacy(self, prefix: str) -> list[tuple[KeyValue, dict[str, Any]]]:
        """The node's records under ``prefix`` in the layout before per-node
        keys (a node that never ran again after the upgrade to move them):
        keys only, then the few such records."""
        out = []
        for k in self._store.keys(prefix).kvs:
            if not is_legacy(k.key, prefix) or (kv := self._store.get(k.key)) is None:
                continue
            if (data := _json(kv)).get("node") == self.name:
                out.append((kv, data))
        return out

    def _records(self) -> _Records:
        return (
            [(kv, _json(kv)) for kv in self._store.range(ENDPOINTS).kvs],
            [(kv, _json(kv)) for kv in self._store.range(IPAM).kvs],
            [(kv, _json(kv)) for kv in self._store.range(PORTS).kvs],
        )

    def _remove_container(self, kv: KeyValue, data: dict[str, Any], records: _Records) -> bool:
        """The container and its records in one transaction (its claims and
        addresses first when there are too many for one); False when the
        container changed since ``kv`` was read."""
        endpoints, addresses, claims = records
        cid = str(data.get("id") or "")
        owner = f"container:{cid}"
        eps = [e.key for e, d in endpoints if d.get("container_id") == cid]
        ips = [a.key for a, d in addresses if d.get("owner") == owner]
        ports = [c.key for c, d in claims if d.get("id") == cid]
        ops: list[Op] = [Delete(k) for k in (*ips, *ports, *eps)]
        # A container with more than MAX_OPS records (hundreds of published
        # ports): its addresses and claims go first, its record and
        # endpoints last, together.
        guard = [Compare.mod_is(kv.key, kv.mod_revision)]
        while len(ops) > MAX_OPS - 2:
            head, ops = ops[: MAX_OPS - 2], ops[MAX_OPS - 2 :]
            if not self._commit(head, guard):
                return False
        ops += [Delete(status_key(self.name, cid)), Delete(CLUSTER_STATUS + cid), Delete(kv.key)]
        claim = self._store.get(name_key(str(data.get("name") or "")))
        if claim is not None and _json(claim).get("id") == cid:
            ops.append(Delete(claim.key))
        if not self._commit(ops, guard):
            return False
        self.result.containers.append(str(data.get("name") or kv.key))
        self.result.endpoints += len(eps)
        self.result.addresses += len(ips)
        self.result.ports += len(ports)
        return True

    def _remove_leftovers(self, removed_ids: set[str]) -> None:
        """Records of the node not reached through a container: endpoints
        of CNI attachments, their addresses and records, claims of its host
        ports, states of containers already gone."""
        name = self.name
        cni_owner = f"cni:{name}/"
        ops: list[Op] = []
        for kv in self._store.range(ENDPOINTS).kvs:
            data = _json(kv)
            if data.get("node") == name or data.get("container_id") in removed_ids:
                ops.append(Delete(kv.key))
                self.result.endpoints += 1
        for kv in self._store.range(IPAM).kvs:
            owner = str(_json(kv).get("owner") or "")
            if owner.startswith(cni_owner) or owner.removeprefix("container:") in removed_ids:
                ops.append(Delete(kv.key))
                self.result.addresses += 1
        for kv in self._store.range(IPAM_BLOCKS).kvs:
            if _json(kv).get("node") == name:  # its blocks: free for other nodes to claim
                ops.append(Delete(kv.key))
        for kv in self._store.keys(PORTS).kvs:
            if kv.key.endswith("@" + name):
                ops.append(Delete(kv.key))
                self.result.ports += 1
        ops.append(Delete(statuses_of(name), prefix=True))
        ops += [Delete(kv.key) for kv, _ in self._legacy(CLUSTER_STATUS)]
        ops.append(Delete(f"{CNI}{name}/", prefix=True))
        self._chunks(ops)

    # -- the catalog -----------------------------------------------------------

    def _remove_registry(self) -> None:
        node = seg(self.name)
        ops: list[Op] = []
        for kv in self._store.keys(SERVICES).kvs:
            # registry/svc/<service>/<node>/<id>
            if kv.key[len(SERVICES) :].split("/")[1:2] == [node]:
                ops.append(Delete(kv.key))
                self.result.services += 1
        for kv in self._store.keys(CHECKS).kvs:
            if kv.key[len(CHECKS) :].split("/")[1:2] == [node]:
                ops.append(Delete(kv.key))
                self.result.checks += 1
        self._chunks(ops)
        self._commit(
            [
                Delete(f"{NODE_CHECKS}{node}/", prefix=True),
                Delete(f"{AGENT}{node}/", prefix=True),
                Delete(f"{COORDS}{node}/", prefix=True),
                Delete(node_key(self.name)),
            ]
        )


def remove_node(store: Store, name: str, *, force: bool = False, local: str = "") -> Removed:
    """Remove node ``name`` and everything it owned (see the module);
    ``local`` (the asking agent's own node) is refused with ``Conflict``."""
    if not name or "/" in name or name.strip() != name or len(name) > 253:
        # Parts of store keys: a "/" could reach another node's records.
        raise InvalidArgument(f"invalid node name {name!r}", node=name)
    if name == local:
        raise Conflict(
            f"node {name} is this agent's own node: stop this agent, then run"
            f" `cove members rm {name}` on another host",
            node=name,
        )
    return NodeRemoval(store, name, force=force).run()
