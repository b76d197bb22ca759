"""Reaping nodes that stay dead (agent flag ``--reap-after DURATION``, as
Consul's ``reconnect_timeout`` reaps failed members after 72 h).

One agent of the cluster reaps at a time: the holder of ``cluster/reaper``,
a key written with the holder's node lease (so it goes when the holder
dies, and another agent takes over on its next pass). The holder notes in
each dead node's ``cluster/known/<name>`` record when it first saw it dead
(``dead_since``, wall-clock seconds, so a new holder carries on from
there), and removes the node (``cove.cluster.removal``) once it has been
dead for ``reap_after`` seconds. A node whose agent joins again rewrites
its known record, which clears the mark.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from cove.clock import Clock
from cove.cluster.nodes import CLUSTER_KNOWN, CLUSTER_NODES
from cove.cluster.removal import remove_node
from cove.errors import CoveError
from cove.store.base import Compare, Put, Store

log = logging.getLogger(__name__)

REAPER = "cluster/reaper"
# Consul's reconnect_timeout default; cove's default is off.
CONSUL_REAP_AFTER = 72 * 3600.0


def _encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True).encode()


class NodeReaper:
    """``run_once`` is one pass (the agent runs it on a worker thread every
    ``interval``). ``lease`` gives the node's current lease (0: none)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        node: str,
        lease: Callable[[], int],
        reap_after: float,
    ) -> None:
        self._store = store
        self._clock = clock
        self._node = node
        self._lease = lease
        self.reap_after = reap_after

    @property
    def interval(self) -> float:
        """Seconds between passes: a tenth of the wait, 1 s to 5 min."""
        return min(max(self.reap_after / 10, 1.0), 300.0)

    def holds(self) -> bool:
        """Whether this agent is the cluster's reaper (taking the role when
        it is free, or when it held it under an earlier lease)."""
        lease = self._lease()
        if not lease:
            return False
        value = _encode({"node": self._node})
        kv = self._store.get(REAPER)
        if kv is None:
            compare = Compare.absent(REAPER)
        elif kv.value == value and kv.lease != lease:
            compare = Compare.mod_is(REAPER, kv.mod_revision)  # ours, before a rejoin
        else:
            return kv.value == value
        ok = self._store.txn([compare], [Put(REAPER, value, lease)]).succeeded
        if ok:
            log.info("node %s reaps nodes dead for %gs", self._node, self.reap_after)
        return ok

    def run_once(self) -> list[str]:
        """Mark newly dead nodes, remove those dead for long enough; the
        names removed."""
        if not self.holds():
            return []
        live = {kv.key[len(CLUSTER_NODES) :] for kv in self._store.keys(CLUSTER_NODES).kvs}
        now = self._clock.time()
        removed: list[str] = []
        for kv in self._store.range(CLUSTER_KNOWN).kvs:
            name = kv.key[len(CLUSTER_KNOWN) :]
            if name in live or name == self._node:
                continue
            try:
                data = json.loads(kv.value)
                since = float(data.get("dead_since") or 0)
            except (ValueError, TypeError, AttributeError):
                continue
            if not since:
                # Only while it is still dead and unchanged.
                self._store.txn(
                    [Compare.absent(CLUSTER_NODES + name), Compare.mod_is(kv.key, kv.mod_revision)],
                    [Put(kv.key, _encode({**data, "dead_since": now}))],
                )
                continue
            if now - since < self.reap_after:
                continue
            log.warning(
                "reaping node %s: dead for %.0fs (--reap-after %gs)",
                name,
                now - since,
                self.reap_after,
            )
            try:
                remove_node(self._store, name)
            except CoveError as exc:
                log.warning("cannot reap node %s: %s", name, exc.message)
                continue
            removed.append(name)
        return removed
