"""The agent's check runner: probes this node's checks on their intervals,
expires TTL checks, deregisters services critical for too long, reaps
sessions, and keeps the node's serfHealth alive through a store lease: its
own, or (in the agent) the node's lease (``NodeLeaseSource``), so a node
renews one lease instead of two.

A status change is a store write (``Catalog.update_check``), so it reaches
the catalog, health queries, blocking queries and DNS through the store. With
an in-process store the API's ``GroupCommit`` is handed over
(``use_group_commit``): TTL updates from many clients, and bursts of probe
results, then share one SQLite transaction like the API's other writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote

import aiohttp

from cove.codec import loads
from cove.errors import CoveError, InvalidArgument, NotFound, StorageFull
from cove.registry.checks import AliasTarget, Ttl
from cove.registry.keys import AGENT, CHECKS, SESSIONS
from cove.registry.probes import Tracker, cut, probe
from cove.registry.sessions import SessionReaper
from cove.registry.types import NODE_CHECKS, CheckDefinition, CheckKind, Status, node_key, seg
from cove.store.base import Event, EventType

if TYPE_CHECKING:
    from cove.registry import Registry
    from cove.store.group import GroupCommit
    from cove.store.hub import Subscription, WatchHub

log = logging.getLogger(__name__)

RESYNC = 30.0  # seconds between full re-reads of this node's checks
RESYNC_WATCHED = 300.0  # the same when the hub's watch delivers every change
TICK = 0.5  # seconds between TTL / deregistration / session sweeps
LEASE_TTL = 15  # seconds the node's serfHealth outlives a silent agent


ALIAS_POLL = 0.5  # seconds between looks at an alias check's target


class NodeLeaseSource(Protocol):
    """A lease kept alive by someone else (the agent's node record,
    ``cove.cluster.nodes.NodeLease``): ``lease`` is the current one (0
    while there is none) and ``on_lease`` reports each new one."""

    @property
    def lease(self) -> int: ...

    def on_lease(self, callback: Callable[[int], None]) -> None: ...


_PROBED = (CheckKind.HTTP, CheckKind.TCP, CheckKind.UDP, CheckKind.GRPC, CheckKind.H2PING)


@dataclass(slots=True)
class _Running:
    definition: CheckDefinition
    tracker: Tracker
    task: asyncio.Task[None] | None = None
    mod_revision: int = 0  # of the definition's store key
    ttl_deadline: float = 0.0
    ttl_entry: int = 0  # the sequence number of its entry in the TTL heap; 0: none
    critical_since: float | None = None
    # The status and output last written to the store: a probe that finds
    # the same writes nothing (no store traffic for a steady check).
    recorded: tuple[Status, str] | None = None
    duration: float | None = None  # seconds the last probe took (kept off the store)


class CheckRunner:
    def __init__(
        self,
        registry: Registry,
        *,
        hub: WatchHub | None = None,
        enable_script_checks: bool = False,
        lease_ttl: int = LEASE_TTL,
        inline: bool = False,
        node_lease: NodeLeaseSource | None = None,
    ) -> None:
        self._registry = registry
        self._clock = registry.clock
        self._hub = hub
        self._scripts = enable_script_checks
        self._lease_ttl = lease_ttl
        self._node_lease = node_lease
        # Status writes on the loop itself when the store is in-process
        # (see cove.api.consul.in_process): cheaper than a thread hop.
        self._inline = inline
        self._commits: GroupCommit | None = None
        self._lease = 0
        self._checks: dict[str, _Running] = {}
        self._ttl_heap: list[tuple[float, int, str]] = []
        self._ttl_seq = 0
        self._ttl_wake = asyncio.Event()
        self._critical: set[str] = set()  # checks that may deregister their service
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None
        self._sub: object | None = None
        self._reaper: SessionReaper | None = None  # with a hub: no polling of sessions
        self._reaper_subs: list[Subscription] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._http = aiohttp.ClientSession()
        if self._node_lease is not None:

            def moved(lease: int) -> None:  # the node lease's thread
                if not loop.is_closed():
                    loop.call_soon_threadsafe(self._follow_lease, lease)

            self._node_lease.on_lease(moved)
        try:
            await self._register_node()
        except StorageFull as exc:
            # A read-only start on a full disk: the node is registered by
            # the lease loop once space returns.
            log.warning("cannot register the node yet: %s", exc.message)
        if self._hub is not None:
            prefix = self._registry.agent_checks_prefix

            loop_thread = threading.get_ident()

            def on_change(events: Sequence[Event]) -> None:
                # Inline: a registration committed on this loop reaches the
                # runner without waking the hub's thread.
                if threading.get_ident() == loop_thread:
                    loop.call_soon(self._apply_events, list(events))
                elif not loop.is_closed():
                    loop.call_soon_threadsafe(self._apply_events, list(events))

            self._sub = self._hub.subscribe(prefix, on_change, inline=True)
            self._reaper = await asyncio.to_thread(self._follow_sessions, self._hub)
        await self._sync()
        self._tasks = [
            asyncio.create_task(self._resync_loop(), name="cove-checks-resync"),
            asyncio.create_task(self._tick_loop(), name="cove-checks-tick"),
            asyncio.create_task(self._ttl_loop(), name="cove-checks-ttl"),
        ]
        if self._node_lease is None:
            self._tasks.append(asyncio.create_task(self._lease_loop(), name="cove-node-lease"))

    async def stop(self, *, leave: bool = False) -> None:
        """Stop probing. The node lease is left to run out (LEASE_TTL) so an
        agent restart does not flap every service on the node to critical;
        ``leave=True`` ends it now, for a node leaving for good."""
        cancel = getattr(self._sub, "cancel", None)
        if cancel is not None:
            cancel()
        for sub in self._reaper_subs:
            sub.cancel()
        tasks = [*self._tasks, *(r.task for r in self._checks.values() if r.task)]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._checks.clear()
        if self._http is not None:
            await self._http.close()
        if self._lease and leave and self._node_lease is None:
            with contextlib.suppress(CoveError):
                await asyncio.to_thread(self._registry.store.lease_revoke, self._lease)

    def use_group_commit(self, commits: GroupCommit | None) -> None:
        """Write check statuses through ``commits`` (the API's group commit,
        on the loop this runner runs on) instead of one store transaction
        each; every write still completes only once its group is committed."""
        self._commits = commits

    def _follow_sessions(self, hub: WatchHub) -> SessionReaper:
        """The sessions and the check changes that may end one, from the
        hub (then one read of the sessions): ``_tick`` reads the store only
        for a session that is due."""
        registry = self._registry
        reaper = SessionReaper(registry.sessions, self._clock, registry.node_name)
        self._reaper_subs = [
            hub.subscribe(prefix, reaper.apply) for prefix in (SESSIONS, CHECKS, NODE_CHECKS, AGENT)
        ]
        reaper.load(registry.store.range(SESSIONS).kvs)
        return reaper

    def kick(self) -> None:
        """Re-read the check definitions soon (after a local registration);
        with a hub the changes arrive as events and this is not needed."""
        if self._hub is None:
            self._dirty.set()

    def _apply_events(self, events: list[Event]) -> None:
        """Follow this node's check definitions one key at a time, so a
        registration costs the same with ten checks or ten thousand."""
        for ev in events:
            cid = unquote(ev.kv.key.rsplit("/", 1)[1])
            if ev.type is EventType.DELETE:
                self._stop_check(cid)
                continue
            try:
                definition = self._registry.catalog.definition(ev.kv.value)
            except (ValueError, KeyError) as exc:
                log.warning("ignoring a malformed check definition %s: %s", cid, exc)
                continue
            current = self._checks.get(cid)
            if current is not None and current.definition == definition:
                if current.mod_revision != ev.kv.mod_revision:
                    current.recorded = None  # registered again: its status may be reset
                current.mod_revision = ev.kv.mod_revision
                continue
            self._stop_check(cid)
            self._start_check(definition, ev.kv.mod_revision)

    def _stop_check(self, cid: str) -> None:
        old = self._checks.pop(cid, None)
        if old is not None and old.task is not None:
            old.task.cancel()

    # -- TTL checks ------------------------------------------------------------

    async def update_ttl(self, check_id: str, status: Status, output: str) -> None:
        """/v1/agent/check/pass|warn|fail|update: set a TTL check's status
        and restart its TTL. ``NotFound`` for an unknown check,
        ``InvalidArgument`` for a check that has no TTL."""
        running = self._checks.get(check_id)
        if running is None:
            await self._sync()
            running = self._checks.get(check_id)
        if running is None:
            raise _unknown_check(check_id)
        if running.definition.kind is not CheckKind.TTL:
            raise InvalidArgument(f'CheckID "{check_id}" does not have associated TTL')
        self._arm_ttl(running)
        await self._publish(running, status, cut(output), strict=True)

    # -- loops -------------------------------------------------------------------

    async def _resync_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._dirty.wait(), RESYNC if self._hub is None else RESYNC_WATCHED
                )
            self._dirty.clear()
            try:
                await self._sync()
            except CoveError as exc:
                log.warning("cannot read this node's checks: %s", exc.message)

    async def _sync(self) -> None:
        """Re-read this node's check definitions, decoding only those whose
        key changed (a full decode of ten thousand would stall the loop)."""
        found = await asyncio.to_thread(
            self._registry.store.range, self._registry.agent_checks_prefix
        )
        seen: set[str] = set()
        for kv in found.kvs:
            cid = unquote(kv.key.rsplit("/", 1)[1])
            seen.add(cid)
            current = self._checks.get(cid)
            if current is not None and current.mod_revision == kv.mod_revision:
                continue
            definition = self._registry.catalog.definition(kv.value)
            if current is not None and current.definition == definition:
                current.recorded = None  # registered again: its status may be reset
                current.mod_revision = kv.mod_revision
                continue
            self._stop_check(cid)
            self._start_check(definition, kv.mod_revision)
        for cid in [c for c in self._checks if c not in seen]:
            self._stop_check(cid)

    def _start_check(self, d: CheckDefinition, mod_revision: int) -> None:
        running = _Running(
            d,
            Tracker(d.initial_status, d.success_before_passing, d.failures_before_critical),
            mod_revision=mod_revision,
        )
        if d.kind is CheckKind.TTL:
            self._arm_ttl(running)
        elif d.kind is CheckKind.ALIAS:
            running.task = asyncio.create_task(self._alias_loop(running), name=f"check-{d.id}")
        elif d.kind in _PROBED or (d.kind is CheckKind.SCRIPT and self._scripts):
            running.task = asyncio.create_task(self._probe_loop(running), name=f"check-{d.id}")
        self._checks[d.id] = running

    async def _probe_loop(self, running: _Running) -> None:
        d = running.definition
        if d.success_before_passing or d.failures_before_critical:
            # Count from the status the check already has (an agent restart
            # must not send a passing check back through SuccessBeforePassing).
            current = await asyncio.to_thread(self._registry.catalog.check_status, d.id)
            if current is not None:
                running.tracker.status = current
        while True:
            start = time.monotonic()
            status, output = await probe(d, self._http)
            running.duration = time.monotonic() - start
            await self._publish(running, running.tracker.observe(status), output)
            await asyncio.sleep(d.interval)

    def durations(self) -> dict[tuple[str, str], float]:
        """Seconds the last probe of each probed check took, by (node,
        check id), for /metrics (any thread)."""
        node = self._registry.node_name
        return {
            (node, cid): r.duration
            for cid, r in list(self._checks.items())
            if r.duration is not None
        }

    async def _alias_loop(self, running: _Running) -> None:
        """An alias check mirrors another service's (or node's) health; it
        follows the store's revision, so it re-reads only after a write."""
        d = running.definition
        target = d.spec if isinstance(d.spec, AliasTarget) else AliasTarget()
        node = target.node or self._registry.node_name
        store = self._registry.store
        hub = self._hub
        seen = -1
        while True:
            # The hub's revision costs no store request (on etcd, one each).
            revision = hub.revision if hub is not None else store.revision
            if revision != seen:
                seen = revision
                status, output = await asyncio.to_thread(
                    alias_health, self._registry, node, target.service, d.id
                )
                await self._publish(running, status, output)
            await asyncio.sleep(ALIAS_POLL)

    async def _publish(
        self, running: _Running, status: Status, output: str, *, strict: bool = False
    ) -> None:
        """Record a status. ``strict`` (an API caller waits for it) raises a
        failed store write instead of logging it, so the client is never told
        a status was recorded that was not."""
        running.tracker.status = status
        if status is Status.CRITICAL:
            if running.critical_since is None:
                running.critical_since = self._clock.monotonic()
                if running.definition.deregister_after and running.definition.service_id:
                    self._critical.add(running.definition.id)
        else:
            running.critical_since = None
            self._critical.discard(running.definition.id)
        if not strict and running.recorded == (status, output):
            return
        try:
            args = (running.definition.id, status, output)
            update = self._registry.catalog.update_check
            if self._commits is not None:
                changed = await self._commits.call(update, *args)
            elif self._inline:
                changed = update(*args)
            else:
                changed = await asyncio.to_thread(update, *args)
        except NotFound:
            if strict:  # the caller must not hear of a status that went nowhere
                raise _unknown_check(running.definition.id) from None
            return  # deregistered meanwhile; the next sync stops it
        except CoveError as exc:
            if strict:
                raise
            log.warning("cannot record check %s: %s", running.definition.id, exc.message)
            return
        running.recorded = (status, output)
        if changed:
            log.debug("check %s is %s", running.definition.id, status)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                await self._tick()
            except CoveError as exc:
                log.warning("check sweep failed: %s", exc.message)

    def _arm_ttl(self, running: _Running) -> None:
        # One heap entry per check: a renewal only moves the deadline, and
        # the sweep re-queues an entry that comes due early. Pushing on every
        # renewal would grow the heap by each TTL update for a whole TTL.
        spec = running.definition.spec
        ttl = spec.seconds if isinstance(spec, Ttl) else 0.0
        running.ttl_deadline = self._clock.monotonic() + ttl
        if not running.ttl_entry:
            self._ttl_seq += 1
            running.ttl_entry = self._ttl_seq
            entry = (running.ttl_deadline, self._ttl_seq, running.definition.id)
            heapq.heappush(self._ttl_heap, entry)
            if self._ttl_heap[0] is entry:  # due before all others: rearm the timer
                self._ttl_wake.set()

    async def _ttl_loop(self) -> None:
        """Expire TTL checks on time: sleep until the earliest deadline of
        the heap (or until an earlier one is pushed), not a fixed sweep."""
        heap = self._ttl_heap
        while True:
            self._ttl_wake.clear()
            delay = heap[0][0] - self._clock.monotonic() if heap else None
            if delay is None or delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ttl_wake.wait(), delay)
                continue
            try:
                await self._expire_ttls()
            except CoveError as exc:
                log.warning("TTL expiry failed: %s", exc.message)
                await asyncio.sleep(TICK)  # the store refused: do not spin

    async def _expire_ttls(self) -> None:
        """Mark critical every TTL check whose deadline has passed."""
        now = self._clock.monotonic()
        heap = self._ttl_heap
        expired: list[_Running] = []
        while heap and heap[0][0] <= now:
            _, seq, cid = heapq.heappop(heap)
            running = self._checks.get(cid)
            if running is None or running.ttl_entry != seq:
                continue  # removed or replaced since
            if running.ttl_deadline > now:  # renewed since: wait for the new deadline
                heapq.heappush(heap, (running.ttl_deadline, seq, cid))
                continue
            running.ttl_entry = 0
            running.ttl_deadline = 0.0
            expired.append(running)
        if self._commits is not None:  # together, so they share commits
            await asyncio.gather(
                *(self._publish(r, Status.CRITICAL, "TTL expired") for r in expired)
            )
        else:
            for running in expired:
                await self._publish(running, Status.CRITICAL, "TTL expired")

    async def _tick(self) -> None:
        # Only critical checks are visited: a sweep must not walk ten
        # thousand healthy checks twice a second. (TTLs: ``_ttl_loop``.)
        now = self._clock.monotonic()
        for cid in list(self._critical):
            running = self._checks.get(cid)
            if running is None or running.critical_since is None:
                self._critical.discard(cid)
                continue
            d = running.definition
            if now - running.critical_since >= d.deregister_after:
                log.info("deregistering %s: critical for %ss", d.service_id, d.deregister_after)
                self._critical.discard(cid)
                with contextlib.suppress(NotFound):
                    await asyncio.to_thread(self._registry.catalog.deregister_service, d.service_id)
                self._dirty.set()
        reaper = self._reaper
        if reaper is None:
            await asyncio.to_thread(self._registry.sessions.reap)
        elif reaper.pending(self._clock.time()):
            await asyncio.to_thread(reaper.reap)

    async def _register_node(self) -> None:
        if self._node_lease is not None:
            lease = self._node_lease.lease
            if not lease:
                return  # not joined yet (a full disk): registered on the join
        else:
            lease = await asyncio.to_thread(self._registry.store.lease_grant, self._lease_ttl)
        await asyncio.to_thread(self._registry.catalog.ensure_node, lease=lease)
        self._lease = lease

    def _follow_lease(self, lease: int) -> None:
        """The node's lease changed (the agent joined again): the node and
        its serfHealth are written again on the new one."""
        if lease == self._lease:
            return
        task = asyncio.create_task(self._reregister(), name="cove-node-register")
        self._tasks.append(task)

    async def _reregister(self) -> None:
        source = self._node_lease
        while source is not None and source.lease and source.lease != self._lease:
            try:
                await self._register_node()
                log.info("node registered on its new lease")
                return
            except CoveError as exc:
                log.warning("cannot register the node on its new lease yet: %s", exc.message)
            await asyncio.sleep(max(self._lease_ttl / 3, 0.5))

    async def _lease_loop(self) -> None:
        store = self._registry.store
        while True:
            await asyncio.sleep(self._lease_ttl / 3)
            try:
                if not self._lease:
                    await self._register_node()
                    log.info("node registered")
                    continue
                await asyncio.to_thread(store.lease_keepalive, self._lease)
            except NotFound:
                log.warning("node lease expired; registering the node again")
                self._lease = 0
                with contextlib.suppress(CoveError):
                    await self._register_node()
            except CoveError as exc:
                log.warning("cannot renew the node lease: %s", exc.message)


def alias_health(registry: Registry, node: str, service_id: str, own_id: str) -> tuple[Status, str]:
    """What an alias check of ``service_id`` on ``node`` (the node itself
    when ``service_id`` is empty) reports: the worst of its checks, critical
    when it does not exist."""
    queries = registry.queries
    if service_id:
        found = queries.agent_service(node, service_id)
        if not found.found:
            return Status.CRITICAL, f"Service {service_id} could not be found on node {node}"
        name = found.data["Service"]
        checks = [
            c
            for c in queries.health_checks(name).data
            if c["Node"] == node and c["ServiceID"] == service_id and c["CheckID"] != own_id
        ]
        what = f"service {service_id}"
    else:
        store = registry.store
        if store.get(node_key(node)) is None:
            return Status.CRITICAL, f"Node {node} could not be found"
        checks = [
            c
            for kv in store.range(f"{NODE_CHECKS}{seg(node)}/").kvs
            if (c := loads(kv.value))["CheckID"] != own_id
        ]
        what = f"node {node}"
    worst = Status.PASSING
    for c in checks:
        if c["Status"] == Status.CRITICAL.value:
            worst = Status.CRITICAL
            break
        if c["Status"] == Status.WARNING.value:
            worst = Status.WARNING
    if worst is Status.PASSING:
        return worst, f"All checks passing for {what}"
    return worst, f"At least one check of {what} is {worst.value}"


def _unknown_check(check_id: str) -> NotFound:
    return NotFound(f'Unknown check ID "{check_id}". Ensure that the check ID is passed')
