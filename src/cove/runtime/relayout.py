"""Moving this node's records written before the per-node layout
(``containers/<name>``, ``cluster/status/<id>``, ``endpoints/<net>/<id>``)
to their keys of now (``cove.runtime.keys``, ``cove.model``), at agent
start-up, before anything reads them.

One transaction per record, guarded by the old key's revision and the new
key's absence: a record changed meanwhile is read again, one moved already
is not there to move, so a crash between two transactions converges on the
next start. On a store of this host alone (SQLite), every record is this
host's, whatever node it names (the host was renamed): all are moved under
this node's prefix, and name this node. On a shared store (etcd) a record
naming another node is left to that node's agent; one naming none (written
before nodes existed) goes with its container: a container's to the first
agent that starts, its endpoints to the agent that took the container (or
whose CNI attachment it is).

Once every record of the node is in place, the mark ``cluster/layout/<node>``
says so: the next start reads that one key and nothing else (the scan reads
the keys of every container, status and endpoint of the cluster). Nothing
writes the old layout any more, so the mark stays true; it goes with the
node's other records when the node is removed (``cove members rm``). On a
store of its own a host that scans (renamed, say) drops the marks of its
former names, so that taking one of them again scans again.
"""

from __future__ import annotations

import json
import logging
from enum import Enum

from cove.model import (
    CONTAINERS,
    ENDPOINTS,
    endpoint_key,
    parse_endpoint_key,
)
from cove.runtime.keys import (
    CLUSTER_STATUS,
    LAYOUT,
    LAYOUT_VERSION,
    container_key,
    containers_of,
    is_legacy,
    layout_key,
    name_claim,
    name_key,
    status_id,
    status_key,
    statuses_of,
)
from cove.store.base import Compare, Delete, KeyValue, Op, Put, Store, local_store

log = logging.getLogger("cove.runtime.relayout")

_ATTEMPTS = 5
_CNI = "cni/"  # as cove.cni.attachments.CNI: cni/<node>/<container id>/<ifname>


class _Outcome(Enum):
    MOVED = 1
    NOT_OURS = 2  # another node's, gone meanwhile, or unreadable: nothing to retry
    LEFT = 3  # this node's, not moved now: the next start tries again


def move_to_node_layout(store: Store, node: str) -> int:
    """Move ``node``'s old-layout container records (with their name
    claims), process states and endpoints to the per-node keys, then mark
    the node's layout current; the number moved. With the mark already
    current, reads that one key and does nothing else."""
    if _current(store.get(layout_key(node))):
        return 0
    alone = local_store(store) is not None
    moved = 0
    complete = True
    for k in store.keys(CONTAINERS).kvs:
        if k.key.startswith(containers_of(node)):
            continue
        if not is_legacy(k.key, CONTAINERS) and not alone:
            continue  # another node's, in the layout of now
        outcome = _move_container(store, store.get(k.key), node, alone)
        moved += outcome is _Outcome.MOVED
        complete = complete and outcome is not _Outcome.LEFT
    for k in store.keys(CLUSTER_STATUS).kvs:
        if k.key.startswith(statuses_of(node)):
            continue
        if is_legacy(k.key, CLUSTER_STATUS):
            if (kv := store.get(k.key)) is not None:
                moved += _move_status(store, kv, node, alone)
        elif alone:
            # Published under this host's former name: published again.
            store.txn([Compare.mod_is(k.key, k.mod_revision)], [Delete(k.key)])
    eps_moved, eps_complete = _move_endpoints(store, node, alone)
    moved += eps_moved
    if moved:
        log.info("moved %d records of node %s to the per-node layout", moved, node)
    if complete and eps_complete:
        _mark(store, node, alone)
    else:
        log.warning("some records of node %s stay in the old layout until the next start", node)
    return moved


def _current(mark: KeyValue | None) -> bool:
    if mark is None:
        return False
    try:
        return int(json.loads(mark.value)["version"]) >= LAYOUT_VERSION
    except (ValueError, KeyError, TypeError):
        return False


def _mark(store: Store, node: str, alone: bool) -> None:
    ops: list[Op] = [Put(layout_key(node), _encode({"version": LAYOUT_VERSION}))]
    if alone:
        ops += [Delete(k.key) for k in store.keys(LAYOUT).kvs if k.key != layout_key(node)]
    store.txn([], ops)


def _encode(data: dict[str, object]) -> bytes:
    return json.dumps(data, sort_keys=True).encode()


def _as_node(kv: KeyValue, data: dict[str, object], node: str) -> bytes:
    """The record's value, naming ``node`` (unchanged when it does)."""
    if data.get("node") == node:
        return kv.value
    return _encode({**data, "node": node})


# -- containers ----------------------------------------------------------------


def _move_container(store: Store, kv: KeyValue | None, node: str, alone: bool) -> _Outcome:
    for _ in range(_ATTEMPTS):
        if kv is None:
            return _Outcome.NOT_OURS  # moved or removed meanwhile
        try:
            data = json.loads(kv.value)
            name, cid, owner = str(data["name"]), str(data["id"]), str(data.get("node") or "")
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable container record %s left where it is", kv.key)
            return _Outcome.NOT_OURS
        if not alone and owner not in ("", node):
            return _Outcome.NOT_OURS  # its own node's agent moves it
        new = container_key(node, name)
        claim = store.get(name_key(name))
        guard = [Compare.mod_is(kv.key, kv.mod_revision), Compare.absent(new)]
        if claim is None:
            guard.append(Compare.absent(name_key(name)))
        elif _claimed_id(claim) == cid:
            guard.append(Compare.mod_is(claim.key, claim.mod_revision))
        else:
            log.error(
                "container %s (%s) not moved: its name is claimed by another container;"
                " remove one of them (cove rm)",
                name,
                cid[:12],
            )
            return _Outcome.LEFT
        ops: list[Op] = [
            Delete(kv.key),
            Put(new, _as_node(kv, data, node)),
            Put(name_key(name), name_claim(node, cid)),
        ]
        if store.txn(guard, ops).succeeded:
            return _Outcome.MOVED
        kv = store.get(kv.key)
    log.warning("container record %s changes too fast to be moved now", kv.key if kv else "")
    return _Outcome.LEFT


def _claimed_id(claim: KeyValue) -> str:
    try:
        return str(json.loads(claim.value)["id"])
    except (ValueError, KeyError, TypeError):
        return ""


def _move_status(store: Store, kv: KeyValue, node: str, alone: bool) -> int:
    try:
        owner = str(json.loads(kv.value).get("node") or "")
    except (ValueError, AttributeError):
        owner = ""
    if owner != node:
        if alone:  # published under this host's former name: published again
            store.txn([Compare.mod_is(kv.key, kv.mod_revision)], [Delete(kv.key)])
        return 0  # else another node's, moved by its agent
    new = status_key(node, status_id(kv.key))
    ok = store.txn(
        [Compare.mod_is(kv.key, kv.mod_revision), Compare.absent(new)],
        [Delete(kv.key), Put(new, kv.value)],
    ).succeeded
    if not ok:  # changed or published anew meanwhile: the old one is stale
        store.txn([Compare.mod_is(kv.key, kv.mod_revision)], [Delete(kv.key)])
    return 1 if ok else 0


# -- endpoints -----------------------------------------------------------------


def _move_endpoints(store: Store, node: str, alone: bool) -> tuple[int, bool]:
    """Move the node's endpoints; (the number moved, whether none is left)."""
    owned: tuple[set[str], set[str]] | None = None  # container ids, CNI endpoint ids
    moved = 0
    complete = True
    for k in store.keys(ENDPOINTS).kvs:
        parsed = parse_endpoint_key(k.key)
        if parsed is None:
            continue
        network, owner, eid = parsed
        if owner == node or (owner and not alone):
            continue  # in place, or another node's in the layout of now
        if owned is None and not alone:
            owned = _owned(store, node)  # read once, only when there is something to move
        outcome = _move_endpoint(store, store.get(k.key), network, eid, node, owned)
        moved += outcome is _Outcome.MOVED
        complete = complete and outcome is not _Outcome.LEFT
    return moved, complete


def _owned(store: Store, node: str) -> tuple[set[str], set[str]]:
    """The ids of ``node``'s containers (moved just before) and the
    endpoint ids of its CNI attachments: what an endpoint naming no node
    belongs to, on a shared store."""
    containers: set[str] = set()
    for kv in store.range(containers_of(node)).kvs:
        try:
            containers.add(str(json.loads(kv.value)["id"]))
        except (ValueError, KeyError, TypeError):
            continue
    attachments: set[str] = set()
    for kv in store.range(f"{_CNI}{node}/").kvs:
        try:
            attachments.add(str(json.loads(kv.value)["endpoint_id"]))
        except (ValueError, KeyError, TypeError):
            continue
    return containers, attachments


def _move_endpoint(
    store: Store,
    kv: KeyValue | None,
    network: str,
    eid: str,
    node: str,
    owned: tuple[set[str], set[str]] | None,
) -> _Outcome:
    """``owned`` None: a store of this host alone (every record is ours)."""
    new = endpoint_key(network, node, eid)
    for _ in range(_ATTEMPTS):
        if kv is None:
            return _Outcome.NOT_OURS  # moved or removed meanwhile
        try:
            data = json.loads(kv.value)
            owner, cid = str(data.get("node") or ""), str(data["container_id"])
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("unreadable endpoint record %s left where it is", kv.key)
            return _Outcome.NOT_OURS
        if owned is not None:
            containers, attachments = owned
            if owner != node and (owner or (cid not in containers and eid not in attachments)):
                return _Outcome.NOT_OURS  # its own node's agent moves it
        ops: list[Op] = [Delete(kv.key), Put(new, _as_node(kv, data, node))]
        guard = [Compare.mod_is(kv.key, kv.mod_revision), Compare.absent(new)]
        if store.txn(guard, ops).succeeded:
            return _Outcome.MOVED
        if store.get(new) is not None:
            # Written anew at its key meanwhile: the old record is stale.
            store.txn([Compare.mod_is(kv.key, kv.mod_revision)], [Delete(kv.key)])
        kv = store.get(kv.key)
    log.warning("endpoint record %s changes too fast to be moved now", kv.key if kv else "")
    return _Outcome.LEFT
