"""Apply the container networking plan: at start-up, on every store change
under ``containers/``, ``endpoints/`` and ``networks/``, periodically, and
synchronously for one container on ``run``/``connect``/``disconnect``.

One lock serialises every kernel change and the store read that precedes
it, so a pass never removes a namespace that a concurrent ``run`` wrote to
the store after the pass read it: a ``run`` writes the store first and
touches the kernel only under the lock.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cove.datapath.netns import Interface, NetnsDatapath
from cove.datapath.nftables import Nft
from cove.errors import CoveError
from cove.model import CONTAINERS, ENDPOINTS, NETWORKS, Endpoint, Network
from cove.runtime import etc, ports
from cove.runtime import plan as planner
from cove.runtime.spec import Container
from cove.store.base import Event, EventType, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The store's view of containers, their endpoints and networks."""

    containers: dict[str, Container]  # by id
    endpoints: dict[str, list[Endpoint]]  # by container id, in the container's network order
    networks: dict[str, Network]
    revision: int = 0
    by_name: dict[str, Container] = field(default_factory=dict)


def read_container(store: Store, name: str) -> Snapshot:
    """The part of the store one container's pass needs: itself, its
    networks and their endpoints (cheaper than everything, as ``run`` and
    ``connect`` need it on every call)."""
    rev = store.revision
    kv = store.get(CONTAINERS + name)
    if kv is None:
        return Snapshot({}, {}, {}, rev)
    c = Container.from_json(json.loads(kv.value))
    networks: dict[str, Network] = {}
    eps: list[Endpoint] = []
    for net in c.networks:
        nkv = store.get(NETWORKS + net)
        if nkv is not None:
            networks[net] = Network.from_json(json.loads(nkv.value))
        for ekv in store.range(f"{ENDPOINTS}{net}/").kvs:
            data = json.loads(ekv.value)
            if data.get("container_id") == c.id:
                eps.append(Endpoint.from_json(data))
    eps.sort(key=lambda e: c.networks.index(e.network) if e.network in c.networks else 99)
    return Snapshot({c.id: c}, {c.id: eps}, networks, rev, {c.name: c})


def read_snapshot(store: Store) -> Snapshot:
    nets = store.range(NETWORKS)
    networks = {n.name: n for n in (Network.from_json(json.loads(kv.value)) for kv in nets.kvs)}
    cons = store.range(CONTAINERS)
    containers = {c.id: c for c in (Container.from_json(json.loads(kv.value)) for kv in cons.kvs)}
    endpoints: dict[str, list[Endpoint]] = {}
    eps = store.range(ENDPOINTS)
    for kv in eps.kvs:
        ep = Endpoint.from_json(json.loads(kv.value))
        endpoints.setdefault(ep.container_id, []).append(ep)
    for cid, lst in endpoints.items():
        order = containers[cid].networks if cid in containers else ()
        lst.sort(key=lambda e: order.index(e.network) if e.network in order else len(order))
    return Snapshot(
        containers=containers,
        endpoints=endpoints,
        networks=networks,
        revision=max(nets.revision, cons.revision, eps.revision),
        by_name={c.name: c for c in containers.values()},
    )


def wanted(snap: Snapshot) -> list[planner.WantedContainer]:
    out: list[planner.WantedContainer] = []
    for cid in snap.containers:
        links: list[planner.WantedLink] = []
        gw4: ipaddress.IPv4Address | None = None
        gw6: ipaddress.IPv6Address | None = None
        for ep in snap.endpoints.get(cid, []):
            net = snap.networks.get(ep.network)
            if net is None:
                continue
            addrs: list[Interface] = []
            if ep.ipv4 is not None and net.ipv4 is not None:
                addrs.append(ipaddress.IPv4Interface(f"{ep.ipv4}/{net.ipv4.cidr.prefixlen}"))
                if gw4 is None:
                    gw4 = net.ipv4.gateway  # type: ignore[assignment]
            if ep.ipv6 is not None and net.ipv6 is not None:
                addrs.append(ipaddress.IPv6Interface(f"{ep.ipv6}/{net.ipv6.cidr.prefixlen}"))
                if gw6 is None:
                    gw6 = net.ipv6.gateway  # type: ignore[assignment]
            links.append(
                planner.WantedLink(
                    endpoint_id=ep.id,
                    host_veth=ep.host_veth,
                    interface=ep.interface,
                    mac=ep.mac,
                    bridge=net.bridge,
                    mtu=net.mtu,
                    addresses=tuple(addrs),
                )
            )
        out.append(planner.WantedContainer(cid, tuple(links), gw4, gw6))
    return out


def published(snap: Snapshot) -> list[ports.Published]:
    out: list[ports.Published] = []
    for cid, c in snap.containers.items():
        eps = snap.endpoints.get(cid, [])
        target = next((e for e in eps if e.ipv4 is not None and e.network in snap.networks), None)
        if target is None or target.ipv4 is None:
            continue
        bridge = snap.networks[target.network].bridge
        out.extend(ports.Published(m, target.ipv4, bridge, c.name) for m in c.ports)
    return out


_NO_PORTS = Container(id="", name="", argv=(), hostname="")


class ContainerReconciler:
    def __init__(
        self,
        store: Store,
        datapath: NetnsDatapath,
        nft: Nft,
        files_dir: Path,
        host_resolv: Callable[[], str],
        interval: float = 15.0,
    ) -> None:
        self._store = store
        self._dp = datapath
        self._nft = nft
        self._files = files_dir
        self._host_resolv = host_resolv
        self._interval = interval
        self.lock = threading.RLock()
        self._cond = threading.Condition()
        self._wake = False
        self._pending: set[str] = set()
        self._synced: dict[str, int] = {}  # container id -> store revision its pass saw
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._ports_digest: str | None = None
        self.last_error: str | None = None

    def etc_dir(self, cid: str) -> Path:
        return self._files / cid / "etc"

    def start(self) -> None:
        self.sync()
        self._thread = threading.Thread(target=self._loop, name="cove-ctr-reconcile", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def kick(self, container_id: str | None = None) -> None:
        """Ask for a pass: of one container, or (``None``) of everything."""
        with self._cond:
            if container_id is None:
                self._wake = True
            else:
                self._pending.add(container_id)
            self._cond.notify_all()

    def on_events(self, events: Sequence[Event]) -> None:
        """Store events: a pass for each container they touch (cheap), and a
        full pass only when a network changed. Deletions were cleaned up by
        whoever deleted; the periodic full pass catches the rest."""
        for ev in events:
            if ev.kv.key.startswith(NETWORKS):
                self.kick()
                continue
            raw = ev.kv.value or (ev.prev.value if ev.prev else b"")
            try:
                data = json.loads(raw) if raw else {}
            except ValueError:
                continue
            cid = data.get("container_id") or data.get("id")
            if not isinstance(cid, str) or ev.type is not EventType.PUT:
                continue
            # The service's own writes were applied by its own pass already.
            if ev.revision > self._synced.get(cid, 0):
                self.kick(cid)

    def sync(self, only: str | None = None, name: str | None = None) -> list[planner.Op]:
        """One pass (``only``: just that container, whose ``name`` makes the
        store read cheap). Raises the first ``CoveError`` of an ``only``
        pass; a full pass logs and goes on."""
        with self.lock, self._dp.session():
            if only is not None and name is not None:
                snap = read_container(self._store, name)
            else:
                snap = read_snapshot(self._store)
            want = wanted(snap)
            if only is None:
                observed = self._dp.observe()
                files = self._dp.list_netns()
            else:
                mine = [w for w in want if w.id == only]
                veths = [link.host_veth for w in mine for link in w.links]
                observed = self._dp.observe([only], veths)
                files = []
            ops = planner.plan(want, observed, files, only=only)
            errors: list[CoveError] = []
            for op in ops:
                try:
                    self._apply(op)
                except CoveError as exc:
                    log.error("reconcile %s failed: %s", op, exc.message)
                    errors.append(exc)
            for cid in snap.containers if only is None else [only]:
                if cid in snap.containers:
                    self._write_etc(snap, snap.containers[cid])
            if only is None and self._files.is_dir():
                for folder in self._files.iterdir():
                    if folder.name not in snap.containers:
                        shutil.rmtree(folder, ignore_errors=True)
            try:
                if only is None or snap.containers.get(only, _NO_PORTS).ports:
                    self._sync_ports(read_snapshot(self._store) if name else snap, only is None)
            except CoveError as exc:
                log.error("published ports: %s", exc.message)
                errors.append(exc)
            if ops:
                log.info("reconciled containers (%s): %d change(s)", only or "all", len(ops))
            self.last_error = errors[0].message if errors else None
            if errors and only is not None:
                raise errors[0]
            if only is not None:
                self._synced[only] = snap.revision
            else:
                self._synced = {c: r for c, r in self._synced.items() if c in snap.containers}
            return ops

    def _apply(self, op: planner.Op) -> None:
        dp = self._dp
        match op:
            case planner.CreateNetns(cid):
                dp.create_netns(cid)
            case planner.DeleteNetns(cid):
                dp.delete_netns(cid)
            case planner.DeleteVeth(name):
                dp.delete_link(name)
            case planner.DeleteInside(cid, name):
                dp.delete_inside(cid, name)
            case planner.AddVeth(cid, link):
                dp.add_veth(cid, link.host_veth, link.interface, link.mac, link.mtu, link.bridge)
            case planner.Configure(cid, link, fresh):
                if not fresh:
                    dp.set_up(link.host_veth)
                dp.configure(cid, link.interface, link.addresses, link.mtu, fresh=fresh)
            case planner.SetRoutes(cid, gw4, gw6):
                dp.set_default_routes(cid, gw4, gw6)

    def _write_etc(self, snap: Snapshot, c: Container) -> None:
        eps = snap.endpoints.get(c.id, [])
        folder = self.etc_dir(c.id)
        folder.mkdir(parents=True, exist_ok=True)
        addresses = [a for e in eps for a in e.addresses]
        nameservers = []
        first = snap.networks.get(eps[0].network) if eps else None
        if first is not None and first.ipv4 is not None:
            nameservers.append(first.ipv4.gateway)
        etc.write_in_place(folder / "hosts", etc.hosts(c.hostname, c.name, addresses))
        etc.write_in_place(folder / "hostname", c.hostname + "\n")
        etc.write_in_place(
            folder / "resolv.conf", etc.resolv_conf(nameservers, self._host_resolv())
        )

    def _sync_ports(self, snap: Snapshot, force: bool) -> None:
        items = published(snap)
        objs = ports.compile_table(items)
        digest = _digest(objs)
        if force and (ports.FAMILY, ports.TABLE) not in self._nft.tables():
            self._ports_digest = None
        if digest == self._ports_digest:
            return
        for bridge in sorted(ports.localnet_bridges(items)):
            self._dp.set_sysctl(f"net/ipv4/conf/{bridge}/route_localnet", "1")
        self._nft.replace_table(ports.FAMILY, ports.TABLE, objs)
        self._ports_digest = digest

    def sync_ports(self) -> None:
        """Recompile the published-port table (after a container with
        published ports is removed)."""
        with self.lock:
            self._sync_ports(read_snapshot(self._store), force=False)

    def remove_files(self, cid: str) -> None:
        shutil.rmtree(self._files / cid, ignore_errors=True)

    def _loop(self) -> None:
        next_full = time.monotonic() + self._interval
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._wake or self._pending or self._stopping,
                    timeout=max(0.0, next_full - time.monotonic()),
                )
                if self._stopping:
                    return
                full = self._wake or time.monotonic() >= next_full
                pending, self._pending, self._wake = self._pending, set(), False
            try:
                if full:
                    next_full = time.monotonic() + self._interval
                    self.sync()
                    continue
                for cid in sorted(pending):
                    try:
                        self.sync(only=cid)
                    except CoveError as exc:
                        log.warning("container %s: %s", cid[:12], exc.message)
            except Exception:  # the loop must survive anything a pass hits
                log.exception("container reconcile pass failed")


def _digest(objs: Sequence[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(objs, sort_keys=True).encode()).hexdigest()
