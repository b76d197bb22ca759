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
    ) -> None:
        self._store = store
        self._nft = nft
        self._clock = clock
        self._bridge_check = bridge_check
        self._policy = PolicyService(store, self._clock)
        self._digest: str | None = None
        self._lock = threading.Lock()
        self._progress = Progress()
        # A pass recompiles every member of every network: under churn
        # (containers attached one after another) one per burst, after it.
        self._worker = Worker("cove-policy", self._pass, interval, retry=0.5, settle=0.05)
        self._follower: Follower | None = None
        self.last_error: str | None = None
        self.warning: str | None = None

    def sync(self, *, force: bool = False) -> bool:
        """Recompile; replace the table when it changed. Returns whether it did."""
        with self._lock:
            revision = self._store.revision
            objs = pc.compile_table(self._policy.model())
            digest = pc.digest(objs)
            changed = force or digest != self._digest
            if changed:
                self._nft.replace_table(pc.FAMILY, pc.TABLE, objs)
                self._digest = digest
            self.last_error = None
        self._progress.mark(revision)
        return changed

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
        """Program the table now, then follow ``hub`` (a private one over
        the store when None)."""
        self.warning = self._bridge_check()
        if self.warning:
            log.error("%s", self.warning)
        try:
            self.sync(force=True)
        except CoveError as exc:
            # Logged and retried by the worker; the old table (if any) stays.
            self.last_error = exc.message
            log.error("cannot program network policy: %s", exc.message)
        self._follower = Follower(hub, PREFIXES, lambda _e: self._worker.kick())
        self._worker.start()

    def stop(self) -> None:
        if self._follower is not None:
            self._follower.stop()
            self._follower = None
        self._worker.stop()
