"""Keeps ``inet cove_policy`` equal to the policy the store describes.

Every change to networks, endpoints, containers (labels) or rules
recompiles the whole table (policies are small) and swaps it in with one
atomic transaction when it differs from what is loaded. An agent restart
leaves the old table in place until the new one replaces it, so denied
traffic never passes in between.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cove.clock import Clock
from cove.datapath.base import NftTables
from cove.errors import CoveError
from cove.model import CONTAINERS, ENDPOINTS, NETWORKS
from cove.policy import compile as pc
from cove.policy.model import POLICY
from cove.policy.service import PolicyService
from cove.registry.keys import SERVICES
from cove.store.base import Store
from cove.store.hub import Follower, WatchHub
from cove.worker import Progress, Worker

log = logging.getLogger(__name__)

PREFIXES = (NETWORKS, ENDPOINTS, CONTAINERS, POLICY, SERVICES)  # SERVICES: intentions
BridgeCheck = Callable[[], str | None]
"""Why traffic inside one bridge would bypass policy, or None (the agent
passes ``cove.datapath.sysctl.bridge_filtering_problem``)."""


def _no_check() -> str | None:
    return None


class PolicyController:
    """Recompiles on every relevant store change (delivered by a WatchHub)
    and every ``interval`` seconds, when the table is rewritten even if
    unchanged, so rules removed by hand come back."""

    def __init__(
        self,
        store: Store,
        nft: NftTables,
        *,
        clock: Clock,
        interval: float = 15.0,
        bridge_check: BridgeCheck = _no_check,
        node: str | None = None,
    ) -> None:
        self._store = store
        # What compiles read: the hub's cache once ``start`` has the hub.
        self._reads = store
        self._nft = nft
        self._clock = clock
        self._bridge_check = bridge_check
        self._node = node  # whose container records compiles may read
        self._policy = PolicyService(store, self._clock, node)
        self._digest: str | None = None
        self._lock = threading.Lock()
        self._progress = Progress()
        # A pass recompiles every member of every network: under churn
        # (containers attached one after another) one per burst, after it.
        self._worker = Worker("cove-policy", self._pass, interval, retry=0.5, settle=0.05)
        self._follower: Follower | None = None
        self._state = threading.Lock()  # _changed and _cached
        self._changed = True  # a store change since the last compile
        self._cached: tuple[list[pc.Obj], int] | None = None
        self.last_error: str | None = None
        self.warning: str | None = None

    def sync(self, *, force: bool = False) -> bool:
        """Recompile; replace the table when it changed. Returns whether it did."""
        with self._lock:
            objs, revision = self._compiled(force)
            digest = pc.digest(objs)
            changed = force or digest != self._digest
            if changed:
                self._nft.replace_table(pc.FAMILY, pc.TABLE, objs)
                self._digest = digest
            self.last_error = None
        self._progress.mark(revision)
        return changed

    def _compiled(self, periodic: bool) -> tuple[list[pc.Obj], int]:
        """The table and the store revision it describes. A periodic pass
        with no store change delivered since the last compile (the hub
        follows every prefix the policy reads) reuses that compile: the
        kernel is still checked, the cluster's records are not re-read."""
        hub = self._follower.hub if self._follower is not None else None
        if periodic and hub is not None and self._cached is not None:
            revision = hub.revision  # first: a change up to it has set _changed
            with self._state:
                if not self._changed:
                    return self._cached[0], max(revision, self._cached[1])
        with self._state:
            self._changed = False
        try:
            revision = self._reads.revision
            objs = pc.compile_table(self._policy.model())
        except BaseException:
            with self._state:
                self._changed = True
            raise
        self._cached = (objs, revision)
        return objs, revision

    def _on_events(self, _events: object) -> None:
        with self._state:
            self._changed = True
        self._worker.kick()

    def _pass(self, kicked: bool) -> None:
        try:
            self.sync(force=not kicked or self.last_error is not None)
        except CoveError as exc:
            self.last_error = exc.message
            raise

    @property
    def store_revision(self) -> int:
        """The store's revision now (to wait for with ``wait_applied``)."""
        return self._store.revision

    def wait_applied(self, revision: int, timeout: float) -> bool:
        return self._progress.wait(revision, timeout, lambda: self._worker.kick(now=True))

    def start(self, hub: WatchHub) -> None:
        """Program the table now, then follow ``hub``. Compiles read the
        cluster's records through ``hub.reads`` (its cache, when it keeps
        one): a change on another host costs no read of the store."""
        self._reads = hub.reads
        self._policy = PolicyService(hub.reads, self._clock, self._node)
        self.warning = self._bridge_check()
        if self.warning:
            log.error("%s", self.warning)
        try:
            self.sync(force=True)
        except CoveError as exc:
            # Logged and retried by the worker; the old table (if any) stays.
            self.last_error = exc.message
            log.error("cannot program network policy: %s", exc.message)
        self._follower = Follower(hub, PREFIXES, self._on_events)
        with self._state:
            self._changed = True  # whatever came before the subscription
        self._worker.start()

    def stop(self) -> None:
        if self._follower is not None:
            self._follower.stop()
            self._follower = None
        self._worker.stop()
