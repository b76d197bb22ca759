"""Moving this node's records written before the per-node layout
(``containers/<name>``, ``cluster/status/<id>``) to their keys of now
(``cove.runtime.keys``), at agent start-up, before anything reads them.

One transaction per record, guarded by the old key's revision: a record
changed meanwhile is read again, one moved already is not there to move, so
a crash between two transactions converges on the next start. On a store of
this host alone (SQLite), every record is this host's, whatever node it
names (the host was renamed): all are moved under this node's prefix.
"""

from __future__ import annotations

import json
import logging

from cove.model import CONTAINERS
from cove.runtime.keys import (
    CLUSTER_STATUS,
    container_key,
    containers_of,
    is_legacy,
    name_claim,
    name_key,
    status_id,
    status_key,
    statuses_of,
)
from cove.store.base import Compare, Delete, KeyValue, Op, Put, Store, local_store

log = logging.getLogger("cove.runtime.relayout")

_ATTEMPTS = 5


def move_to_node_layout(store: Store, node: str) -> int:
    """Move ``node``'s old-layout container records (with their name
    claims) and process states to the per-node keys; the number moved."""
    alone = local_store(store) is not None
    moved = 0
    # Keys first (a shared store sends no value it does not need), then
    # each record to move.
    for k in store.keys(CONTAINERS).kvs:
        if k.key.startswith(containers_of(node)):
            continue
        if not is_legacy(k.key, CONTAINERS) and not alone:
            continue  # another node's, in the layout of now
        if _move_container(store, store.get(k.key), node, alone):
            moved += 1
    for k in store.keys(CLUSTER_STATUS).kvs:
        if k.key.startswith(statuses_of(node)):
            continue
        if is_legacy(k.key, CLUSTER_STATUS):
            if (kv := store.get(k.key)) is not None:
                moved += _move_status(store, kv, node, alone)
        elif alone:
            # Published under this host's former name: published again.
            store.txn([Compare.mod_is(k.key, k.mod_revision)], [Delete(k.key)])
    if moved:
        log.info("moved %d records of node %s to the per-node layout", moved, node)
    return moved


def _move_container(store: Store, kv: KeyValue | None, node: str, alone: bool) -> bool:
    for _ in range(_ATTEMPTS):
        if kv is None:
            return False  # moved or removed meanwhile
        try:
            data = json.loads(kv.value)
            name, cid, owner = str(data["name"]), str(data["id"]), str(data.get("node") or "")
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable container record %s left where it is", kv.key)
            return False
        if not alone and owner not in ("", node):
            return False  # its own node's agent moves it
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
            return False
        ops: list[Op] = [
            Delete(kv.key),
            Put(new, kv.value),
            Put(name_key(name), name_claim(node, cid)),
        ]
        if store.txn(guard, ops).succeeded:
            return True
        kv = store.get(kv.key)
    log.warning("container record %s changes too fast to be moved now", kv.key if kv else "")
    return False


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
