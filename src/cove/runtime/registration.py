"""Containers started with ``--service NAME:PORT[:TAGS]`` are instances in
the registry, on the container's address, with a TCP check.

Level-triggered like every other watcher: the wanted instances are derived
from the stored containers and endpoints (pure), compared with what the
registry holds for this node, and the difference is written. So a crash
between ``cove run`` and the registration, or a ``cove rm`` while the agent
was down, converges on the next pass. The sync owns only the service IDs it
creates (``cove-<container>-<service>``, marked in Meta).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cove.cluster.nodes import owned
from cove.errors import CoveError
from cove.model import ENDPOINTS, Endpoint, ServiceSpec
from cove.registry import Registry
from cove.runtime.keys import containers_of
from cove.runtime.spec import Container, Desired
from cove.store.base import Event, Store, local_store
from cove.worker import Worker

log = logging.getLogger(__name__)

META_KEY = "cove-container"
ID_PREFIX = "cove-"
# Short, so a freshly started container that was not listening yet at the
# first probe becomes passing soon after it does.
CHECK_INTERVAL = "3s"


@dataclass(frozen=True, slots=True)
class Wanted:
    service_id: str
    name: str
    address: str
    port: int
    tags: tuple[str, ...]
    container: str


def wanted(
    containers: Iterable[Container], endpoints: Iterable[Endpoint], node: str = ""
) -> dict[str, Wanted]:
    """Instances that should exist: one per service of each container that
    should run, on the address of its first network that has one. With
    ``node``, only the containers that run on that node: each agent
    registers its own, under its own node, and checks them where they run."""
    by_container: dict[str, dict[str, Endpoint]] = {}
    for ep in endpoints:
        by_container.setdefault(ep.container_id, {})[ep.network] = ep
    out: dict[str, Wanted] = {}
    for c in containers:
        if c.desired is not Desired.RUNNING or not c.services:
            continue
        if node and not owned(c.node, node):
            continue
        eps = by_container.get(c.id, {})
        address = next(
            (str(a) for net in c.networks if net in eps for a in eps[net].addresses), None
        )
        if address is None:
            continue
        for text in c.services:
            spec = ServiceSpec.parse(text)
            if spec is None:
                continue
            sid = f"{ID_PREFIX}{c.name}-{spec.name}"
            out[sid] = Wanted(sid, spec.name, address, spec.port, spec.tags, c.name)
    # Containers of other runtimes (CNI attachments): no container record,
    # registered while their endpoint exists. Of another node's endpoints,
    # whose container records are not read, none.
    known = {c.id for c in containers}
    for ep in endpoints:
        if ep.container_id in known or not ep.services or not ep.addresses:
            continue
        if node and not owned(ep.node, node):
            continue
        for text in ep.services:
            spec = ServiceSpec.parse(text)
            if spec is not None:
                sid = f"{ID_PREFIX}{ep.container_name}-{spec.name}"
                out[sid] = Wanted(
                    sid, spec.name, str(ep.addresses[0]), spec.port, spec.tags, ep.container_name
                )
    return out


def plan(
    want: Mapping[str, Wanted], registered: Mapping[str, Mapping[str, Any]]
) -> tuple[list[Wanted], list[str]]:
    """(instances to (re)register, service IDs to deregister). Only
    instances this sync made (marked in Meta) are ever deregistered."""
    ours = {
        sid: svc
        for sid, svc in registered.items()
        if (svc.get("Meta") or {}).get(META_KEY) is not None
    }
    add = [w for sid, w in sorted(want.items()) if sid not in ours or not _same(w, ours[sid])]
    drop = sorted(sid for sid in ours if sid not in want)
    return add, drop


def _records(ev: Event) -> list[object] | None:
    """The record ``ev`` wrote and the one it replaced, decoded; None when
    they cannot tell (a delete without its old value, an unreadable one)."""
    raws = [r for r in (ev.kv.value, ev.prev.value if ev.prev is not None else b"") if r]
    if not raws:
        return None
    try:
        return [json.loads(raw) for raw in raws]
    except ValueError:
        return None


def _of_node(records: list[object] | None, node: str) -> bool:
    """Whether the records are ``node``'s ("": every node's, as on a store
    of one host; a record without a node is a legacy one of this host's;
    records that cannot tell may be)."""
    if not node or records is None:
        return True
    return any(not isinstance(d, dict) or d.get("node", "") in ("", node) for d in records)


def _has_services(records: list[object] | None) -> bool:
    if records is None:
        return True
    return any(not isinstance(d, dict) or d.get("services") for d in records)


def _same(w: Wanted, svc: Mapping[str, Any]) -> bool:
    return (
        svc.get("Service") == w.name
        and svc.get("Address") == w.address
        and svc.get("Port") == w.port
        and tuple(svc.get("Tags") or ()) == w.tags
    )


class ServiceRegistrar:
    """Runs ``plan`` on its own thread, on store events and periodically."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        interval: float = 15.0,
        node: str = "",
        reads: Store | None = None,
    ) -> None:
        """``reads``: where passes read every container and endpoint (the
        agent's hub cache, so another host's change costs no store read)."""
        self._store = store
        self._reads = store if reads is None else reads
        # On a store of this host alone, every container is this host's.
        self._node = node if local_store(store) is None else ""
        self._containers = containers_of(node)  # the only ones it registers
        self._registry = registry
        self._worker = Worker("cove-registrar", self._pass, interval)
        # With ``on_events`` fed by the hub, a periodic pass runs only when
        # some container or endpoint changed since the last one (or the
        # node's registered services did: ``on_registry_events``).
        self.watched = False
        self._changed = True
        self._lock = threading.Lock()

    def _pass(self, kicked: bool) -> None:
        with self._lock:
            changed, self._changed = self._changed, False
        if kicked or changed or not self.watched:
            self.run_once()

    def on_registry_events(self, _events: Sequence[Event]) -> None:
        """The node's registered services changed (a hand deregistration
        is repaired by the next periodic pass)."""
        with self._lock:
            self._changed = True

    def on_events(self, events: Sequence[Event]) -> None:
        """A pass only for changes that can touch an instance: records of
        this node's containers (or their endpoints) with services, before
        or after. Another node's endpoint is its registrar's business."""
        records = [_records(ev) for ev in events]  # each decoded once
        mine = [r for r in records if _of_node(r, self._node)]
        if not mine:
            return
        with self._lock:
            self._changed = True
        if any(_has_services(r) for r in mine):
            self._worker.kick()

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()

    def run_once(self) -> tuple[list[Wanted], list[str]]:
        records = self._reads.range(self._containers).kvs
        containers = [Container.from_json(json.loads(kv.value)) for kv in records]
        endpoints = [
            Endpoint.from_json(json.loads(kv.value)) for kv in self._reads.range(ENDPOINTS).kvs
        ]
        registered = self._registry.queries.agent_services(self._registry.node_name)
        add, drop = plan(wanted(containers, endpoints, self._node), registered)
        for w in add:
            try:
                self._registry.register_container(
                    w.service_id,
                    w.name,
                    w.address,
                    w.port,
                    w.tags,
                    interval=CHECK_INTERVAL,
                    meta={META_KEY: w.container},
                )
                log.info("registered %s (%s:%d) for container %s", w.name, w.address, w.port,
                         w.container)  # fmt: skip
            except CoveError as exc:
                log.error("cannot register %s: %s", w.service_id, exc.message)
        for sid in drop:
            self._registry.deregister_container(sid)
            log.info("deregistered %s", sid)
        return add, drop
