"""Keeps ``inet cove_lb`` equal to the VIPs and their passing backends.

Level-triggered: at start a full compile replaces the table in one
transaction (an agent restart never leaves a moment without rules: the old
table stays until the new one swaps in). Afterwards each store change that
touches VIPs or backends recomputes only the services it names and applies
one small transaction for them (``compile.service_update``); established
connections keep their conntrack NAT entries, so nothing is flushed. Any
failure of an incremental step falls back to a full resync, and a periodic
resync repairs whatever else went wrong.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from cove.clock import Clock
from cove.datapath.base import NftTables
from cove.errors import CoveError, DatapathError
from cove.lb import compile as lbc
from cove.lb.backends import Backends
from cove.lb.model import VIPS, Vip
from cove.store.base import Event, Store
from cove.store.hub import Follower, WatchHub
from cove.worker import Progress, Worker

log = logging.getLogger(__name__)


def _count(services: Iterable[lbc.ServiceLb]) -> Counter[tuple[str, str]]:
    return Counter(
        (svc.v, str(b.address)) for svc in services for g in svc.groups for b in g.backends
    )


def _as_sets(counts: Counter[tuple[str, str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {"v4": set(), "v6": set()}
    for (v, addr), n in counts.items():
        if n > 0:
            out[v].add(addr)
    return out


# The datapath's protocol, under the name the wiring imports it by.
NftLike = NftTables


class LbController:
    """Programs VIPs. ``sync()``/``resync()`` are callable directly (tests,
    the agent at start); ``start()`` runs a watcher thread."""

    def __init__(
        self,
        store: Store,
        nft: NftLike,
        backends: Backends,
        *,
        clock: Clock,
        resync_interval: float = 60.0,
    ) -> None:
        self._store = store
        self._nft = nft
        self._backends = backends
        self._clock = clock
        self._resync_interval = resync_interval
        self._applied: dict[str, lbc.ServiceLb] = {}
        # How many services list each backend address: the hairpin sets hold
        # the addresses counted > 0, kept up to date per change (recomputing
        # them from 10,000 backends would cost more than the nft update).
        self._hairpin: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._progress = Progress()
        # Events the hub delivered, for the next pass (appended on the hub's
        # thread, drained on the worker's).
        self._pending: list[Event] = []
        self._pending_lock = threading.Lock()
        self._worker = Worker("cove-lb", self._pass, resync_interval, retry=0.5)
        self._follower: Follower | None = None
        self.last_error: str | None = None

    # -- state ------------------------------------------------------------

    def _vips(self, services: Collection[str] | None) -> dict[str, Vip]:
        if services is None:
            kvs = self._store.range(VIPS).kvs
        else:
            kvs = tuple(kv for s in services if (kv := self._store.get(VIPS + s)) is not None)
        out: dict[str, Vip] = {}
        for kv in kvs:
            try:
                vip = Vip.from_json(json.loads(kv.value))
            except (ValueError, CoveError) as exc:
                log.warning("unreadable VIP %s: %s", kv.key, exc)
                continue
            out[vip.service] = vip
        return out

    def desired(self, services: Collection[str] | None = None) -> dict[str, lbc.ServiceLb]:
        """What the table should hold, for ``services`` (all when None)."""
        vips = self._vips(services)
        backends = self._backends.passing(list(vips)) if vips else {}
        return {name: lbc.plan(vip, backends.get(name, ())) for name, vip in vips.items()}

    @property
    def store_revision(self) -> int:
        """The store's revision now (to wait for with ``wait_applied``)."""
        return self._store.revision

    @property
    def applied(self) -> Mapping[str, lbc.ServiceLb]:
        return dict(self._applied)

    # -- programming ------------------------------------------------------

    def resync(self) -> None:
        """Recompile the whole table and swap it in atomically."""
        with self._lock:
            revision = self._store.revision
            want = self.desired()
            self._nft.replace_table(lbc.FAMILY, lbc.TABLE, lbc.table_objects(want))
            self._applied = want
            self._hairpin = _count(want.values())
            self.last_error = None
        self._mark_applied(revision)
        log.info("VIP table resynced: %d services", len(want))

    def sync(self, services: Collection[str] | None = None) -> int:
        """Bring ``services`` (all when None) to their desired state in one
        transaction; returns how many services changed. Falls back to a
        full resync when the incremental step fails."""
        with self._lock:
            # Only a pass over every service marks a revision (below): a
            # pass for a few services costs no read of it.
            revision = self._store.revision if services is None else 0
            names = set(self._applied) if services is None else set(services)
            want = self.desired(None if services is None else names)
            if services is None:
                names |= set(want)
            cmds: list[Mapping[str, Any]] = []
            changed: dict[str, lbc.ServiceLb | None] = {}
            for name in sorted(names):
                old = self._applied.get(name)
                new = want.get(name)
                if old == new:
                    continue
                cmds.extend(lbc.service_update(old, new))
                changed[name] = new
            if changed:
                after = dict(self._applied)
                for name, svc in changed.items():
                    if svc is None:
                        after.pop(name, None)
                    else:
                        after[name] = svc
                delta: Counter[tuple[str, str]] = Counter()
                for name, svc in changed.items():
                    old_svc = self._applied.get(name)
                    delta.subtract(_count([old_svc] if old_svc else []))
                    delta.update(_count([svc] if svc else []))
                before = Counter({k: self._hairpin[k] for k in delta})
                after_counts = Counter({k: before[k] + d for k, d in delta.items()})
                cmds.extend(lbc.hairpin_update(_as_sets(before), _as_sets(after_counts)))
                try:
                    self._nft.transaction(cmds)
                except DatapathError as exc:
                    log.warning("incremental VIP update failed (%s); resyncing", exc.message)
                    self.last_error = exc.message
                    full = True
                else:
                    self._applied = after
                    for k, n in after_counts.items():
                        if n > 0:
                            self._hairpin[k] = n
                        else:
                            self._hairpin.pop(k, None)
                    full = False
            else:
                full = False
        if full:
            self.resync()
            return len(changed)
        if services is None:
            # Only a pass over every service vouches for the whole revision;
            # events past the ones that named ``services`` may be in flight.
            self._mark_applied(revision)
        return len(changed)

    def remove(self) -> None:
        """Delete the table (when VIPs are turned off)."""
        with self._lock:
            self._nft.delete_table(lbc.FAMILY, lbc.TABLE)
            self._applied = {}
            self._hairpin = Counter()

    # -- watching ---------------------------------------------------------

    def _mark_applied(self, revision: int) -> None:
        self._progress.mark(revision)

    def wait_applied(self, revision: int, timeout: float) -> bool:
        """Block until the store revision ``revision`` is in the kernel."""
        if self._progress.revision >= revision:
            return True
        deadline = self._clock.monotonic() + timeout
        # Every event up to ``revision`` must have reached the queue before a
        # pass can vouch for it; a pass then covers the hub's revision.
        if self._follower is not None and not self._follower.hub.wait_for(revision, timeout):
            return False
        left = max(0.0, deadline - self._clock.monotonic())
        return self._progress.wait(revision, left, self._worker.kick)

    def affected(self, events: Sequence[Event]) -> set[str] | None:
        names: set[str] = set()
        rest: list[Event] = []
        for ev in events:
            if ev.kv.key.startswith(VIPS):
                names.add(ev.kv.key[len(VIPS) :])
            else:
                rest.append(ev)
        if rest:
            more = self._backends.affected(rest)
            if more is None:
                return None
            # Only services with a VIP (now or before) matter.
            # (The hub's copy of the VIPs, when following one: no read.)
            reads = self._follower.hub.reads if self._follower is not None else self._store
            names |= {n for n in more if n in self._applied or reads.get(VIPS + n)}
        return names

    def _queue(self, events: Sequence[Event]) -> None:
        with self._pending_lock:
            self._pending.extend(events)
        self._worker.kick()

    def _pass(self, kicked: bool) -> None:
        """Apply what the hub delivered; the periodic pass re-derives every
        service (a full replace would also empty the affinity sets, so it
        only applies differences) or resyncs after a failure."""
        covered = self._follower.hub.revision if self._follower else self._store.revision
        with self._pending_lock:
            events, self._pending = self._pending, []
        try:
            if self.last_error is not None:
                self.resync()
            elif events:
                self.sync(self.affected(events))
            elif not kicked:
                self.sync(None)
        except CoveError as exc:
            self.last_error = exc.message
            raise
        self._mark_applied(covered)

    def start(self, hub: WatchHub) -> None:
        """Resync now, then follow ``hub`` (a private one over the store
        when None). A failing first resync (nftables missing a feature, say)
        is logged and retried by the worker, so the rest of the agent still
        comes up."""
        prefixes = (VIPS, *self._backends.prefixes())
        # Events from here on are queued; the resync covers what came before.
        self._follower = Follower(hub, prefixes, self._queue)
        try:
            self.resync()
        except CoveError as exc:
            self.last_error = exc.message
            log.error("cannot program service VIPs: %s", exc.message)
        self._worker.start()

    def stop(self) -> None:
        if self._follower is not None:
            self._follower.stop()
            self._follower = None
        self._worker.stop()
