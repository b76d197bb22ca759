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
from pathlib import Path

from cove.clock import Clock, SystemClock
from cove.errors import CoveError, WatchCompacted
from cove.lb.controller import NftLike
from cove.model import CONTAINERS, ENDPOINTS, NETWORKS
from cove.policy import compile as pc
from cove.policy.model import POLICY
from cove.policy.service import PolicyService
from cove.store.base import Store

log = logging.getLogger(__name__)

PREFIXES = (NETWORKS, ENDPOINTS, CONTAINERS, POLICY)
BR_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def bridge_filtering_problem(path: Path = BR_NF) -> str | None:
    """Why traffic inside one bridge would bypass policy, or None when
    br_netfilter hands it to the inet forward hook as needed."""
    try:
        value = path.read_text().strip()
    except OSError:
        return (
            "br_netfilter is not loaded: policy cannot filter traffic between containers "
            "of the same network (run `modprobe br_netfilter`)"
        )
    if value != "1":
        return (
            "net.bridge.bridge-nf-call-iptables is 0: policy cannot filter traffic between "
            "containers of the same network (set it to 1)"
        )
    return None


class PolicyController:
    def __init__(self, store: Store, nft: NftLike, *, clock: Clock | None = None) -> None:
        self._store = store
        self._nft = nft
        self._clock = clock or SystemClock()
        self._policy = PolicyService(store, self._clock)
        self._digest: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._applied_revision = 0
        self._cv = threading.Condition()
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
        with self._cv:
            self._applied_revision = max(self._applied_revision, revision)
            self._cv.notify_all()
        return changed

    @property
    def store_revision(self) -> int:
        """The store's revision now (to wait for with ``wait_applied``)."""
        return self._store.revision

    def wait_applied(self, revision: int, timeout: float) -> bool:
        deadline = self._clock.monotonic() + timeout
        with self._cv:
            while self._applied_revision < revision:
                left = deadline - self._clock.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.5))
            return True

    def start(self) -> None:
        self.warning = bridge_filtering_problem()
        if self.warning:
            log.error("%s", self.warning)
        try:
            self.sync(force=True)
        except CoveError as exc:
            # Logged and retried by the thread; the old table (if any) stays.
            self.last_error = exc.message
            log.error("cannot program network policy: %s", exc.message)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cove-policy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        watch = self._store.watch("", self._store.revision + 1)
        try:
            while not self._stop.is_set():
                try:
                    events = watch.next(timeout=0.5)
                    if any(e.kv.key.startswith(PREFIXES) for e in events):
                        self.sync()
                    elif self.last_error is not None:
                        self.sync(force=True)
                    elif events:
                        # Unrelated writes still move the revision forward.
                        with self._cv:
                            self._applied_revision = max(
                                self._applied_revision, events[-1].revision
                            )
                            self._cv.notify_all()
                except WatchCompacted:
                    watch.close()
                    watch = self._store.watch("", self._store.revision + 1)
                    self.sync(force=True)
                except CoveError as exc:
                    self.last_error = exc.message
                    log.error("policy programming failed: %s", exc.message)
                    if self._stop.wait(0.5):
                        break
        finally:
            watch.close()
