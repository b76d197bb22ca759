"""Apply the container networking plan: at start-up, on every store change
under ``containers/``, ``endpoints/`` and ``networks/``, periodically, and
synchronously for one container on ``run``/``connect``/``disconnect``.

One lock serialises every kernel change and the store read that precedes
it, so a pass never removes a namespace that a concurrent ``run`` wrote to
the store after the pass read it: a ``run`` writes the store first and
touches the kernel only under the lock.

``connect`` and ``disconnect`` take a fast path (``attach``, ``detach``):
straight to the kernel in a few batched netlink requests, without reading
its state first; anything unexpected falls back to a pass of the container.
A detached veth pair is retired at once and deleted later in one batch, as
the kernel takes 15-40 ms per deletion. While the service changes a
container (``claim``), the store events of its own writes start no second
pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cove.cluster.nodes import owned
from cove.datapath.base import ContainerDatapath, Interface, NftLister, NftTables
from cove.errors import CoveError, storage_error
from cove.model import CONTAINERS, ENDPOINTS, NETWORKS, Endpoint, Network, endpoints_in
from cove.runtime import etc, ports
from cove.runtime import plan as planner
from cove.runtime.keys import container_key, containers_of, find_container
from cove.runtime.portguard import PortGuard
from cove.runtime.spec import HOST_GATEWAY, Container
from cove.store.base import Event, EventType, Store, local_store
from cove.store.cache import CachedReads
from cove.worker import Worker

log = logging.getLogger(__name__)

# Retired veths are deleted once detaches have paused this long (one batch
# for many), or at the latest after _REAP_WAIT.
_REAP_QUIET = 0.05
_REAP_WAIT = 1.0
# Seconds a full pass waits for the hub's cache to hold the store's latest
# write before it reads the store itself instead.
_CATCH_UP = 2.0
# With the kernel's notifications heard (``kernel_changed``), the periodic
# tick reads the namespaces only when something changed, and every this
# many intervals anyway (10 minutes by default): a safety net behind the
# notifications, for what sends none (a namespace file unmounted by hand).
# Reading 500 namespaces costs about 1.5 s of CPU.
SAFETY_NET_INTERVALS = 40


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The store's view of containers, their endpoints and networks."""

    containers: dict[str, Container]  # by id
    endpoints: dict[str, list[Endpoint]]  # by container id, in the container's network order
    networks: dict[str, Network]
    revision: int = 0
    by_name: dict[str, Container] = field(default_factory=dict)

    def owned_by(self, node: str) -> Snapshot:
        """Only the containers (and their endpoints) ``node``'s agent runs:
        the kernel of one host holds nothing of another host's containers."""
        if not node or all(owned(c.node, node) for c in self.containers.values()):
            return self
        keep = {cid: c for cid, c in self.containers.items() if owned(c.node, node)}
        return Snapshot(
            containers=keep,
            endpoints={cid: eps for cid, eps in self.endpoints.items() if cid in keep},
            networks=self.networks,
            revision=self.revision,
            by_name={c.name: c for c in keep.values()},
        )


def read_container(store: Store, name: str, node: str | None = None) -> Snapshot:
    """The part of the store one container's pass needs: itself, its
    networks and their endpoints (cheaper than everything, as ``run`` and
    ``connect`` need it on every call); with ``node``, only if it is that
    node's (read at its key: no look-up of its name's claim)."""
    rev = store.revision
    kv = find_container(store, name) if node is None else store.get(container_key(node, name))
    if kv is None:
        return Snapshot({}, {}, {}, rev)
    c = Container.from_json(json.loads(kv.value))
    networks: dict[str, Network] = {}
    for net in c.networks:
        nkv = store.get(NETWORKS + net)
        if nkv is not None:
            networks[net] = Network.from_json(json.loads(nkv.value))
    eps = container_endpoints(store, c)
    return Snapshot({c.id: c}, {c.id: eps}, networks, rev, {c.name: c})


def container_endpoints(store: Store, c: Container) -> list[Endpoint]:
    """``c``'s endpoints, in the order of its networks. Records that do
    not even mention its id are skipped undecoded: a network's endpoints
    are scanned on every attach and detach."""
    needle = c.id.encode()
    eps: list[Endpoint] = []
    for net in c.networks:
        for ekv in store.range(endpoints_in(net)).kvs:
            if needle not in ekv.value:
                continue
            data = json.loads(ekv.value)
            if data.get("container_id") == c.id:
                eps.append(Endpoint.from_json(data))
    eps.sort(key=lambda e: c.networks.index(e.network) if e.network in c.networks else 99)
    return eps


def read_snapshot(store: Store, node: str | None = None) -> Snapshot:
    """Every container of the cluster, or only ``node``'s (its own prefix
    of the store: an agent reads and watches no other node's)."""
    nets = store.range(NETWORKS)
    networks = {n.name: n for n in (Network.from_json(json.loads(kv.value)) for kv in nets.kvs)}
    cons = store.range(CONTAINERS if node is None else containers_of(node))
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
    for cid, c in snap.containers.items():
        if c.host_network:
            continue  # in the host's namespace: nothing of its own to build
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
        # The first network with an address: its IPv4 and IPv6 addresses
        # receive the mapping's IPv4 and IPv6 traffic.
        target = next((e for e in eps if e.addresses and e.network in snap.networks), None)
        if target is None:
            continue
        bridge = snap.networks[target.network].bridge
        out.extend(ports.Published(m, target.ipv4, target.ipv6, bridge, c.name) for m in c.ports)
    return out


_NO_PORTS = Container(id="", name="", argv=(), hostname="")


class ContainerReconciler:
    def __init__(
        self,
        store: Store,
        datapath: ContainerDatapath,
        nft: NftLister,
        files_dir: Path,
        host_resolv: Callable[[], str],
        interval: float = 15.0,
        guard_nft: NftTables | None = None,
        node: str = "",
        host_hosts: Callable[[], str] = lambda: "",
    ) -> None:
        self._store = store
        # the host's /etc/hosts, which a --network host container gets (Docker's)
        self._host_hosts = host_hosts
        # On a store of this host alone, every container is this host's.
        self._node = node if local_store(store) is None else ""
        self._home = node  # whose records it reads: containers/<node>/
        self._dp = datapath
        self._nft = nft
        # Guard entries change on every attach and detach: in-process when
        # the library is there (an nft process costs ~20 ms).
        self.guard = PortGuard(guard_nft or nft, nft, lambda: wanted(self._read()))
        self._files = files_dir
        self._host_resolv = host_resolv
        self._interval = interval
        self.lock = threading.RLock()
        self._state = threading.Lock()  # guards the fields up to _held
        self._wake = False
        self._pending: dict[str, str | None] = {}  # container id -> name, if known
        self._synced: dict[str, int] = {}  # container id -> store revision its pass saw
        # Containers the service is changing and will bring in line itself,
        # with the newest revision of the events about them held back meanwhile.
        self._claimed: dict[str, int] = {}
        self._held: dict[str, int] = {}
        self._next_full = 0.0
        self._worker = Worker("cove-ctr-reconcile", self._pass, interval)
        self._ports_digest: str | None = None
        self.last_error: str | None = None
        self._retired = 0
        self._last_retired = 0.0
        # Guard entries of retired veths, removed with them by the reaper: a
        # retired pair is down and carries nothing meanwhile, and ``detach``
        # answers without waiting for nft.
        self._unguard: list[str] = []
        self._reaper = Worker("cove-veth-reaper", self._reap, interval)
        # Set by whoever subscribes ``on_events`` to the hub: the periodic
        # pass may then reuse its last snapshot (``_read_periodic``).
        self.watched = False
        # Set with ``watched``: the hub's reads, where a full pass reads
        # the cluster's containers (its cache, caught up to the store).
        self.reads: CachedReads | None = None
        self._changed = True
        self._snap: Snapshot | None = None
        self._reused = False  # the last _read_periodic reused the snapshot
        # Set by whoever feeds ``kernel_changed`` (a watch of the kernel's
        # notifications): the periodic tick may then skip reading every
        # namespace while neither the kernel nor the store changed.
        self.kernel_watched = False
        self._kernel_changed = True
        self._store_changed = True  # since the last full pass
        self._next_check = 0.0  # the safety net's next full pass
        self._resolv_seen: str | None = None  # the host's resolv.conf at the last full pass
        self._want: tuple[Snapshot, list[planner.WantedContainer]] | None = None
        self._extra: list[ports.Published] | None = None  # the last _more_published
        # Ports published by containers of other runtimes (CNI attachments).
        self._more_published: list[Callable[[], list[ports.Published]]] = []

    def add_published(self, source: Callable[[], list[ports.Published]]) -> None:
        """Publish ``source()``'s ports too, in the same table, on every pass."""
        self._more_published.append(source)

    def _read(self) -> Snapshot:
        """The store's containers that run on this node."""
        return read_snapshot(self._store, self._home).owned_by(self._node)

    def _read_periodic(self, *, reuse: bool = True) -> Snapshot:
        """The periodic pass's snapshot: when the hub follows the store for
        this reconciler (``watched``) and delivered no change since the last
        full read, that read again (the kernel is still checked against it),
        so an idle agent does not re-read every container of the cluster.
        Every full pass reads through here (``reuse`` False: a fresh read),
        so a change is read once, not again by the next periodic pass."""
        with self._state:
            fresh = not reuse or not self.watched or self._changed or self._snap is None
            self._changed = False
        self._reused = not fresh and self._snap is not None
        if fresh or self._snap is None:
            try:
                reads = self.reads.caught_up(_CATCH_UP) if self.reads is not None else self._store
                self._snap = read_snapshot(reads, self._home).owned_by(self._node)
            except BaseException:
                # The change is still unread (the store is away, say): the
                # next pass must read it, not reuse what came before it.
                with self._state:
                    self._changed = True
                raise
        return self._snap

    def _read_one(self, name: str) -> Snapshot:
        # Its networks' endpoints are scanned for its own: from the cache,
        # once that holds every write made so far (this container's too).
        store = self.reads.caught_up(_CATCH_UP) if self.reads is not None else self._store
        return read_container(store, name, self._home).owned_by(self._node)

    def etc_dir(self, cid: str) -> Path:
        return self._files / cid / "etc"

    def start(self) -> None:
        self.sync()
        self._next_full = time.monotonic() + self._interval
        self._next_check = time.monotonic() + self._interval * SAFETY_NET_INTERVALS
        self._worker.start()
        self._reaper.start()

    def stop(self) -> None:
        self._worker.stop()
        self._reaper.stop()
        self.reap_now()

    def reap_now(self) -> None:
        """Delete the veths ``detach`` retired (before a container goes, and
        at shutdown, so nothing is left over)."""
        if self._retired:
            self._retired = 0
            try:
                self._dp.reap()
            except CoveError as exc:
                log.warning("cannot delete retired links: %s", exc.message)
        with self.lock:
            gone, self._unguard = self._unguard, []
            try:
                self.guard.remove(gone)
            except CoveError as exc:
                # The next full pass rebuilds the table without them.
                log.warning("guard entries of retired links: %s", exc.message)

    def _reap(self, _kicked: bool) -> None:
        deadline = time.monotonic() + _REAP_WAIT
        while self._retired and time.monotonic() < deadline:
            quiet = self._last_retired + _REAP_QUIET - time.monotonic()
            if quiet <= 0:
                break
            time.sleep(quiet)
        self.reap_now()

    def kick(self, container_id: str | None = None, name: str | None = None) -> None:
        """Ask for a pass: of one container, or (``None``) of everything."""
        with self._state:
            if container_id is None:
                self._wake = True
            else:
                self._pending[container_id] = name
        self._worker.kick()

    @contextlib.contextmanager
    def claim(self, container_id: str, name: str) -> Iterator[None]:
        """Around a change the service writes and applies itself (``run``,
        ``connect``, ``disconnect``): its store events do not start a second,
        concurrent pass; any the service's own pass did not cover (it
        failed, or someone else wrote too) start one afterwards."""
        with self._state:
            self._claimed[container_id] = self._claimed.get(container_id, 0) + 1
        try:
            yield
        finally:
            with self._state:
                left = self._claimed.pop(container_id) - 1
                if left:
                    self._claimed[container_id] = left
                    again = False
                else:
                    again = self._held.pop(container_id, 0) > self._synced.get(container_id, 0)
            if again:
                self.kick(container_id, name)

    def on_events(self, events: Sequence[Event]) -> None:
        """Store events: a pass for each container they touch (cheap), and a
        full pass only when a network changed. Deletions were cleaned up by
        whoever deleted; the periodic full pass catches the rest."""
        with self._state:
            self._changed = True  # the periodic pass reads the store again
            self._store_changed = True
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
            if self._node and not owned(str(data.get("node") or ""), self._node):
                continue  # another host's: its agent builds it
            name = data.get("container_name") or data.get("name")
            with self._state:
                if cid in self._claimed:
                    self._held[cid] = max(self._held.get(cid, 0), ev.revision)
                    continue
            # The service's own writes were applied by its own pass already.
            if ev.revision > self._synced.get(cid, 0):
                self.kick(cid, name if isinstance(name, str) else None)

    def sync(
        self, only: str | None = None, name: str | None = None, *, force: bool = False
    ) -> list[planner.Op]:
        """One pass (``only``: just that container, whose ``name`` makes the
        store read cheap; ``force``: check the kernel's guard table even if
        nothing changed). Raises the first ``CoveError`` of an ``only``
        pass; a full pass logs and goes on."""
        with self.lock, self._dp.session():
            one = only is not None and name is not None
            if one and name is not None:
                snap = self._read_one(name)
            else:
                snap = self._read_periodic(reuse=force)
            want = wanted(snap)
            if only is None:
                self._want = (snap, want)
                self._resolv_seen = self._host_resolv()
            errors: list[CoveError] = []
            # Before any link comes up, so a new port is never unguarded.
            try:
                if only is None:
                    self.guard.sync(want, force=force)
                else:
                    self.guard.sync_container(only, want)
            except CoveError as exc:
                log.error("port guard: %s", exc.message)
                errors.append(exc)
            if only is None:
                observed = self._dp.observe()
                files = self._dp.list_netns()
            else:
                mine = [w for w in want if w.id == only]
                veths = [link.host_veth for w in mine for link in w.links]
                observed = self._dp.observe([only], veths)
                files = []
            ops = planner.plan(want, observed, files, only=only)
            for op in ops:
                try:
                    self._apply(op)
                except CoveError as exc:
                    log.error("reconcile %s failed: %s", op, exc.message)
                    errors.append(exc)
            for cid in snap.containers if only is None else [only]:
                if cid in snap.containers:
                    try:
                        self._write_etc(snap, snap.containers[cid])
                    except OSError as exc:  # a full disk must not stop the pass
                        err = storage_error(exc, str(self._files), "cannot write /etc files")
                        log.error("container %s: %s", cid[:12], err.message)
                        errors.append(err)
            if only is None and self._files.is_dir():
                for folder in self._files.iterdir():
                    if folder.name not in snap.containers:
                        shutil.rmtree(folder, ignore_errors=True)
            try:
                if only is None or snap.containers.get(only, _NO_PORTS).ports:
                    reuse = force and only is None and self._reused
                    self._sync_ports(self._read() if name else snap, only is None, reuse=reuse)
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

    def attach(self, cid: str, name: str, endpoint_id: str) -> None:
        """Bring up one new endpoint of container ``cid`` (``connect``):
        straight to the kernel, without reading its state first. Anything
        unexpected (a namespace not there, a leftover link in the way) falls
        back to a full pass of the container, which raises what it cannot
        repair."""
        with self.lock:
            snap = self._read_one(name)
            c = snap.containers.get(cid)
            mine = [w for w in wanted(snap) if w.id == cid]
            link = next((k for w in mine for k in w.links if k.endpoint_id == endpoint_id), None)
            # (A missing namespace fails ``attach`` before anything is made.)
            if c is None or link is None or c.ports:
                self.sync(only=cid, name=name)
                return
            # Default routes go via the first network that has each family
            # (``wanted``); this link sets them only if it is that network.
            gateways: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
            for version, gw in ((4, mine[0].gateway4), (6, mine[0].gateway6)):
                first = next(
                    (k for k in mine[0].links if any(a.version == version for a in k.addresses)),
                    None,
                )
                if gw is not None and first is link:
                    gateways.append(gw)
            try:
                self.guard.add(cid, link)
                self._dp.attach(
                    cid, link.host_veth, link.interface, link.mac, link.mtu, link.bridge,
                    link.addresses, gateways,
                )  # fmt: skip
            except CoveError as exc:
                log.info("attach of %s: %s; full pass", name, exc.message)
                self.sync(only=cid, name=name)
                return
            self._write_etc(snap, c)
            self._synced[cid] = max(self._synced.get(cid, 0), snap.revision)

    def detach(self, cid: str, name: str, host_veths: Sequence[str]) -> None:
        """Remove endpoints of container ``cid`` that the store no longer
        has (``disconnect``): retire their veth pairs (gone from the
        container at once, deleted in the background) and rewrite the
        container's /etc files."""
        with self.lock:
            snap = self._read_one(name)
            c = snap.containers.get(cid)
            if c is None or c.ports:
                self.sync(only=cid, name=name)
                return
            try:
                for veth in host_veths:
                    self._dp.retire_veth(cid, veth)
                    self._retired += 1
                    self._last_retired = time.monotonic()
            except CoveError as exc:
                log.info("detach of %s: %s; full pass", name, exc.message)
                self.sync(only=cid, name=name)
                return
            finally:
                if self._retired:
                    self._reaper.kick()
            self._unguard.extend(host_veths)
            self._write_etc(snap, c)
            self._synced[cid] = max(self._synced.get(cid, 0), snap.revision)

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
                # The fast path's own request: one way to make a pair.
                dp.attach(
                    cid, link.host_veth, link.interface, link.mac, link.mtu, link.bridge,
                    link.addresses,
                )  # fmt: skip
            case planner.Configure(cid, link):
                dp.set_up(link.host_veth)
                dp.configure(cid, link.interface, link.addresses, link.mtu)
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
        gateway = str(first.ipv4.gateway) if first is not None and first.ipv4 else ""
        extra = [
            (host, gateway if address == HOST_GATEWAY else address)
            for host, _, address in (h.partition(":") for h in c.extra_hosts)
            if gateway or address != HOST_GATEWAY
        ]
        if c.host_network:
            hosts = etc.host_hosts(self._host_hosts(), extra)
        else:
            hosts = etc.hosts(c.hostname, c.name, addresses, extra)
        etc.write_in_place(folder / "hosts", hosts)
        etc.write_in_place(folder / "hostname", c.hostname + "\n")
        etc.write_in_place(
            folder / "resolv.conf",
            etc.resolv_conf(nameservers, self._host_resolv(), c.dns, c.dns_search, c.dns_options),
        )

    def _sync_ports(self, snap: Snapshot, force: bool, *, reuse: bool = False) -> None:
        """``reuse``: the other runtimes' ports of the last compile (a
        periodic pass on an unchanged snapshot; they call ``sync_ports``
        when theirs change)."""
        items = published(snap)
        if not reuse or self._extra is None:
            self._extra = [p for source in self._more_published for p in source()]
        items.extend(self._extra)
        objs = ports.compile_table(items)
        digest = _digest(objs)
        if force and not self._nft.has_table(ports.FAMILY, ports.TABLE):
            self._ports_digest = None
        if digest == self._ports_digest:
            return
        # Only where the host's 127.0.0.1 clients need it, and off again
        # once they no longer do.
        localnet = ports.localnet_bridges(items)
        bridges = localnet | {n.bridge for n in snap.networks.values()}
        for bridge in sorted(bridges):
            value = "1" if bridge in localnet else "0"
            try:
                self._dp.set_sysctl(f"net/ipv4/conf/{bridge}/route_localnet", value)
            except CoveError:
                if bridge in localnet:
                    raise
        self._nft.replace_table(ports.FAMILY, ports.TABLE, objs)
        self._ports_digest = digest

    def sync_ports(self) -> None:
        """Recompile the published-port table (after a container with
        published ports is removed)."""
        with self.lock:
            self._sync_ports(self._read(), force=False)

    def remove_files(self, cid: str) -> None:
        shutil.rmtree(self._files / cid, ignore_errors=True)

    def forget(self, cid: str) -> None:
        """Remove what cove keeps for a removed container: its files and
        its ports' guard entries."""
        self.remove_files(cid)
        with self.lock:
            try:
                self.guard.forget(cid)
            except CoveError as exc:
                log.warning("guard entries of %s: %s", cid[:12], exc.message)

    def kernel_changed(self) -> None:
        """The kernel says a container's link, address or route changed (or
        it may have): the next tick is a full pass, so a change is repaired
        within an interval, as when every tick read everything. (Not at
        once: cove's own changes are heard too, and a burst of them costs
        one pass, not one each.)"""
        with self._state:
            self._kernel_changed = True

    def _pass(self, kicked: bool) -> None:
        """The worker's pass: everything when asked (a network changed), on
        the periodic tick, and at least every ``interval`` under steady
        churn; otherwise just the containers the events named. A periodic
        tick that finds nothing changed since the last full pass (see
        ``_quiet``) only checks the nftables tables."""
        now = time.monotonic()
        with self._state:
            pending, self._pending = self._pending, {}
            wake, self._wake = self._wake, False
            full = wake or not kicked or now >= self._next_full
            if full and not wake and self._quiet(now):
                full = False
                tables = not kicked
            else:
                tables = False
            if full:
                self._kernel_changed = self._store_changed = False
        if full:
            self._next_full = now + self._interval
            self._next_check = now + self._interval * SAFETY_NET_INTERVALS
            self.sync(force=not kicked)
            return
        if tables:
            self._check_tables()
        for cid, name in sorted(pending.items()):
            try:
                self.sync(only=cid, name=name)
            except CoveError as exc:
                log.warning("container %s: %s", cid[:12], exc.message)

    def _quiet(self, now: float) -> bool:
        """Whether a full pass would find what the last one found: the
        kernel's notifications are heard and reported no change, the store
        delivered none, the last pass had no error, the host's resolver
        file (copied into every container) is unchanged and the safety
        net is not due. Called with ``_state`` held."""
        return (
            self.kernel_watched
            and self.watched
            and not self._kernel_changed
            and not self._store_changed
            and self.last_error is None
            and now < self._next_check
            and self._host_resolv() == self._resolv_seen
        )

    def _check_tables(self) -> None:
        """The quiet tick: the nftables tables, which no notification
        covers here (``nft flush ruleset`` removes them), are checked
        against the kernel and rebuilt if they are not there."""
        with self.lock:
            snap = self._read_periodic()
            if self._want is None or self._want[0] is not snap:
                self._want = (snap, wanted(snap))
            errors: list[CoveError] = []
            try:
                self.guard.sync(self._want[1], force=True)
            except CoveError as exc:
                log.error("port guard: %s", exc.message)
                errors.append(exc)
            try:
                self._sync_ports(snap, True, reuse=self._reused)
            except CoveError as exc:
                log.error("published ports: %s", exc.message)
                errors.append(exc)
            self.last_error = errors[0].message if errors else None


def _digest(objs: Sequence[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(objs, sort_keys=True).encode()).hexdigest()
