"""Overlay networks across hosts: a pure plan from (store, kernel), and a
reconciler that applies it on store changes, periodically and on demand.

On each host with an endpoint on an overlay network, the network has a
bridge (its gateway addresses, as a local network's) and a VXLAN device
plugged into it: learning off and ARP/ND proxy on, so nothing floods and
ARP and ND for remote containers are answered on the host. Every remote
container on the network has a forwarding entry (its MAC -> its host's
advertise address) and a permanent neighbour entry per address on the
VXLAN device. A host without an endpoint on the network holds nothing for
it: the bridge and device come with the first local endpoint and go with
the last.

cove's nft table ``inet cove_overlay`` accepts the VXLAN UDP port only from
the advertise addresses of live nodes (and of the hosts of entries kept for
a node whose record expired, see below), and drops it from anywhere else.

A node whose record expired (its agent died) keeps its containers running.
Their entries stay where they are as long as their endpoints are in the
store, so established traffic keeps flowing: the plan keeps an existing
entry of a remote endpoint whose node it does not know, but makes no new
one (it has no address for it). When the node's agent returns, its record
is back and the entries are exact again; when its endpoints are removed,
the entries go with them.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cove.cluster.nodes import CLUSTER_NODES
from cove.datapath.base import (
    VXLAN_PORT,
    FdbEntry,
    NeighEntry,
    ObservedOverlay,
    OverlayDatapath,
    vxlan_name,
)
from cove.errors import CoveError
from cove.model import (
    ENDPOINTS,
    NETWORKS,
    Endpoint,
    IPAddress,
    Network,
    NetworkDriver,
    network_of,
)
from cove.network import firewall
from cove.network import reconcile as bridges
from cove.store.base import Event, Store, local_store
from cove.store.cache import CachedReads
from cove.worker import Worker

log = logging.getLogger(__name__)

FAMILY = "inet"
TABLE = "cove_overlay"

Obj = dict[str, Any]
REREAD_EVERY = 10
# Seconds a pass waits for the hub's cache to hold the store's latest write
# before it reads the store itself instead.
_CATCH_UP = 2.0
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True, slots=True)
class RemoteEndpoint:
    """An endpoint and the node it lives on (``""``: a legacy record, the
    local node's)."""

    endpoint: Endpoint
    node: str


# -- operations --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateVxlan:
    name: str
    vni: int
    local: str
    port: int
    mtu: int
    master: str


@dataclass(frozen=True, slots=True)
class UpdateFdb:
    name: str
    add: tuple[FdbEntry, ...]
    remove: tuple[FdbEntry, ...]


@dataclass(frozen=True, slots=True)
class UpdateNeigh:
    name: str
    add: tuple[NeighEntry, ...]
    remove: tuple[NeighEntry, ...]


@dataclass(frozen=True, slots=True)
class ReplaceTable:
    objects: tuple[Obj, ...]
    digest: str


@dataclass(frozen=True, slots=True)
class DeleteTable:
    pass


Op = (
    bridges.CreateBridge
    | bridges.DeleteLink
    | bridges.SetMtu
    | bridges.SetUp
    | bridges.AddAddress
    | bridges.DeleteAddress
    | CreateVxlan
    | UpdateFdb
    | UpdateNeigh
    | ReplaceTable
    | DeleteTable
)


@dataclass(frozen=True, slots=True)
class Desired:
    """What the store asks of this host."""

    networks: tuple[Network, ...]  # every overlay network
    endpoints: tuple[RemoteEndpoint, ...]  # every endpoint on an overlay network
    nodes: Mapping[str, str]  # live node -> advertise address
    local_node: str
    advertise: str
    port: int = VXLAN_PORT
    single_host: bool = False  # a store of this host alone: every endpoint is local

    def is_local(self, node: str) -> bool:
        return self.single_host or node in ("", self.local_node)


def active(desired: Desired) -> list[Network]:
    """The overlay networks with an endpoint on this host."""
    here = {r.endpoint.network for r in desired.endpoints if desired.is_local(r.node)}
    return [n for n in desired.networks if n.name in here]


def plan(desired: Desired, observed: ObservedOverlay, applied_digest: str | None) -> list[Op]:
    """The operations that make this host's kernel match ``desired``.
    The port filter comes first (so a new VXLAN socket is never open to
    anyone), removals of devices last but before the filter goes."""
    ops: list[Op] = []
    nets = sorted(active(desired), key=lambda n: n.name)
    wanted_vx = {vxlan_name(n.id): n for n in nets}
    wanted_br = {n.bridge for n in nets}
    idle_br = {n.bridge for n in desired.networks} - wanted_br
    kept_peers: set[IPAddress] = set()
    entries: list[Op] = []
    for net in nets:
        name = vxlan_name(net.id)
        have = observed.vxlans.get(name)
        fdb, neigh = _entries(desired, net, have.fdb if have else frozenset())
        kept_peers.update(e.dst for e in fdb)
        fresh = have is None or _must_recreate(desired, net, have)
        old_fdb = frozenset() if fresh or have is None else have.fdb
        old_neigh = frozenset() if fresh or have is None else have.neigh
        ops.extend(_bridge_ops(net, observed))
        if fresh:
            if have is not None:
                ops.append(bridges.DeleteLink(name))
            assert net.vni is not None
            ops.append(
                CreateVxlan(name, net.vni, desired.advertise, desired.port, net.mtu, net.bridge)
            )
        elif have is not None and have.mtu != net.mtu:
            ops.append(bridges.SetMtu(name, net.mtu))
        add_f, rm_f = _diff(fdb, old_fdb)
        if add_f or rm_f:
            entries.append(UpdateFdb(name, add_f, rm_f))
        add_n, rm_n = _diff(neigh, old_neigh)
        if add_n or rm_n:
            entries.append(UpdateNeigh(name, add_n, rm_n))
    ops.extend(entries)
    # Bridges before VXLAN devices: once a network's device is gone, so is
    # its bridge (nothing is seen with the one and not the other).
    for name in sorted(idle_br & set(observed.bridges)):
        ops.append(bridges.DeleteLink(name))
    for name in sorted(observed.vxlans):
        if name not in wanted_vx:
            ops.append(bridges.DeleteLink(name))
    table = (FAMILY, TABLE) in observed.nft_tables
    if nets:
        peers = kept_peers | {
            ipaddress.ip_address(a)
            for n, a in desired.nodes.items()
            if n != desired.local_node and _is_ip(a)
        }
        objs = port_filter(desired.port, peers)
        dig = firewall.digest(objs)
        if dig != applied_digest or not table:
            ops.insert(0, ReplaceTable(tuple(objs), dig))
    elif table:
        ops.append(DeleteTable())
    return ops


def _bridge_ops(net: Network, observed: ObservedOverlay) -> list[Op]:
    have = observed.bridges.get(net.bridge)
    want = bridges.gateway_interfaces(net)
    out: list[Op] = []
    if have is None:
        out.append(bridges.CreateBridge(net.bridge, net.mtu))
        out.extend(bridges.AddAddress(net.bridge, a) for a in sorted(want, key=str))
        out.append(bridges.SetUp(net.bridge))
        return out
    if have.mtu != net.mtu:
        out.append(bridges.SetMtu(net.bridge, net.mtu))
    out.extend(bridges.DeleteAddress(net.bridge, a) for a in sorted(have.addresses - want, key=str))
    out.extend(bridges.AddAddress(net.bridge, a) for a in sorted(want - have.addresses, key=str))
    if not have.up:
        out.append(bridges.SetUp(net.bridge))
    return out


def _must_recreate(desired: Desired, net: Network, have: Any) -> bool:
    """Settings that are fixed at creation (the proxy flag) or that a
    device in service should not change under its peers."""
    return bool(
        have.vni != net.vni
        or have.local != desired.advertise
        or have.port != desired.port
        or have.learning
        or not have.proxy
        or have.master != net.bridge
        or not have.up
    )


def _entries(
    desired: Desired, net: Network, existing: frozenset[FdbEntry]
) -> tuple[frozenset[FdbEntry], frozenset[NeighEntry]]:
    by_mac = {e.mac: e for e in existing}
    fdb: set[FdbEntry] = set()
    neigh: set[NeighEntry] = set()
    for r in desired.endpoints:
        ep = r.endpoint
        if ep.network != net.name or desired.is_local(r.node):
            continue
        mac = ep.mac.lower()
        if not MAC.match(mac):
            continue  # never a cove-made record; nothing of it reaches a command line
        addr = desired.nodes.get(r.node)
        if addr is not None and _is_ip(addr):
            entry: FdbEntry | None = FdbEntry(mac, ipaddress.ip_address(addr))
        else:
            entry = by_mac.get(mac)  # a node without a record: keep what works
        if entry is None:
            continue
        fdb.add(entry)
        neigh.update(NeighEntry(a, mac) for a in ep.addresses)
    return frozenset(fdb), frozenset(neigh)


def _diff(want: frozenset[Any], have: frozenset[Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    return tuple(sorted(want - have, key=str)), tuple(sorted(have - want, key=str))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def port_filter(port: int, peers: Iterable[IPAddress]) -> list[Obj]:
    """``inet cove_overlay``: the VXLAN port only from ``peers``."""
    objs: list[Obj] = [
        {
            "chain": {
                "name": "input",
                "type": "filter",
                "hook": "input",
                "prio": -10,
                "policy": "accept",
            }
        }
    ]
    udp = {
        "match": {
            "op": "==",
            "left": {"payload": {"protocol": "udp", "field": "dport"}},
            "right": port,
        }
    }
    for version, proto in ((4, "ip"), (6, "ip6")):
        addrs = sorted(str(p) for p in peers if p.version == version)
        if not addrs:
            continue
        src = {
            "match": {
                "op": "==",
                "left": {"payload": {"protocol": proto, "field": "saddr"}},
                "right": {"set": addrs},
            }
        }
        objs.append({"rule": {"chain": "input", "expr": [udp, src, {"accept": None}]}})
    objs.append(
        {
            "rule": {
                "chain": "input",
                "expr": [udp, {"drop": None}],
                "comment": "VXLAN only from cove nodes",
            }
        }
    )
    return objs


def apply(datapath: OverlayDatapath, op: Op) -> None:
    match op:
        case CreateVxlan(name, vni, local, port, mtu, master):
            datapath.create_vxlan(name, vni, local, port, mtu, master)
        case UpdateFdb(name, add, remove):
            datapath.update_fdb(name, add, remove)
        case UpdateNeigh(name, add, remove):
            datapath.update_neigh(name, add, remove)
        case ReplaceTable(objects, _):
            datapath.replace_table(FAMILY, TABLE, objects)
        case DeleteTable():
            datapath.delete_table(FAMILY, TABLE)
        case bridges.CreateBridge(name, mtu):
            datapath.create_bridge(name, mtu)
        case bridges.DeleteLink(name):
            datapath.delete_link(name)
        case bridges.SetMtu(name, mtu):
            datapath.set_mtu(name, mtu)
        case bridges.SetUp(name):
            datapath.set_up(name)
        case bridges.AddAddress(name, address):
            datapath.add_address(name, address)
        case bridges.DeleteAddress(name, address):
            datapath.delete_address(name, address)


# -- store -------------------------------------------------------------------


def read_desired(
    store: Store,
    local_node: str,
    advertise: str,
    port: int = VXLAN_PORT,
    single_host: bool = False,
) -> tuple[Desired, int, list[Network]]:
    """The overlay networks, their endpoints and the live nodes; the
    newest revision of the reads; and every network."""
    nets_r = store.range(NETWORKS)
    every = [Network.from_json(json.loads(kv.value)) for kv in nets_r.kvs]
    nets = tuple(n for n in every if n.driver is NetworkDriver.OVERLAY and n.vni is not None)
    eps: list[RemoteEndpoint] = []
    revision = nets_r.revision
    if nets:
        # One read: from the hub's view, the endpoints of the networks this
        # host is on (``cove.agent.following``), which are the ones that matter.
        names = {n.name for n in nets}
        result = store.range(ENDPOINTS)
        revision = max(revision, result.revision)
        for kv in result.kvs:
            if network_of(kv.key) not in names:
                continue
            data = json.loads(kv.value)
            eps.append(RemoteEndpoint(Endpoint.from_json(data), str(data.get("node") or "")))
    nodes_r = store.range(CLUSTER_NODES)
    nodes: dict[str, str] = {}
    for kv in nodes_r.kvs:
        try:
            data = json.loads(kv.value)
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("advertise"), str):
            nodes[kv.key[len(CLUSTER_NODES) :]] = data["advertise"]
    revision = max(revision, nodes_r.revision)
    desired = Desired(nets, tuple(eps), nodes, local_node, advertise, port, single_host)
    return desired, revision, every


class OverlayReconciler:
    """Runs ``plan``/``apply`` on its own thread, woken by ``kick()`` (store
    events under networks/, endpoints/ and cluster/nodes/) or every
    ``interval`` seconds; ``prepare_bridge`` runs a pass at once when a
    container is about to be plugged into an overlay bridge."""

    def __init__(
        self,
        store: Store,
        datapath: OverlayDatapath,
        local_node: str,
        advertise: str,
        port: int = VXLAN_PORT,
        interval: float = 15.0,
        shared: bool | None = None,
    ) -> None:
        """``shared``: whether other hosts use ``store`` (default: unless it
        is a store of this host alone, SQLite or memory, where every
        endpoint is this host's whatever node it was made under)."""
        self._single = not shared if shared is not None else local_store(store) is not None
        self._store = store
        self._dp = datapath
        self._node = local_node
        self._advertise = advertise
        self._port = port
        self._lock = threading.Lock()
        self._digest: str | None = None
        self._bridges: dict[str, bool] = {}  # bridge -> of an overlay network?
        self._overlay_networks: frozenset[str] = frozenset()
        self._known_networks: frozenset[str] = frozenset()
        self._applied = 0
        self._cond = threading.Condition()
        # Set by the agent once ``on_events`` follows the hub.
        self.watched = False
        self._worker = Worker("cove-overlay", self._pass, interval)
        self.errors: dict[str, str] = {}
        # The store's side of the last pass; periodic passes (which repair
        # the kernel) reuse it, and read the store again only every
        # REREAD_EVERY-th time: every change of it wakes a pass of its own.
        self._desired: tuple[Desired, int] | None = None
        self._periodic = 0
        # Set by the agent with ``watched``: the hub's reads, where the
        # worker's passes read the cluster's endpoints (its cache).
        self.reads: CachedReads | None = None

    def start(self) -> None:
        try:
            self.run_once()
        except CoveError as exc:
            log.error("overlay reconcile failed: %s", exc.message)
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()

    def kick(self) -> None:
        self._worker.kick()

    @property
    def applied_revision(self) -> int:
        return self._applied

    def wait_applied(self, revision: int, timeout: float) -> bool:
        self.kick()
        with self._cond:
            return self._cond.wait_for(lambda: self._applied >= revision, timeout=timeout)

    def prepare_bridge(self, bridge: str) -> None:
        """Before a veth goes into ``bridge``: if it is an overlay network's,
        make sure it (and its VXLAN device) exist. A bridge network's costs
        a dictionary lookup; one not seen before, a read of the networks."""
        overlay = self._bridges.get(bridge)
        if overlay is None:
            self._learn_bridges(
                Network.from_json(json.loads(kv.value)) for kv in self._store.range(NETWORKS).kvs
            )
            overlay = self._bridges.get(bridge, False)
        if overlay:  # this host's endpoint on it is written: the hub's view has it
            self.run_once(cached=True)

    def on_events(self, events: Sequence[Event]) -> None:
        """Store events: a pass for a change of networks or nodes, or of an
        endpoint on an overlay network or one this has not seen yet (the
        endpoints of bridge networks are no concern of this)."""
        overlays, known = self._overlay_networks, self._known_networks
        for ev in events:
            key = ev.kv.key
            network = network_of(key) if key.startswith(ENDPOINTS) else None
            if network is None or network in overlays or network not in known:
                self.kick()
                return

    def _learn_bridges(self, networks: Iterable[Network]) -> None:
        nets = list(networks)
        self._bridges = {n.bridge: n.driver is NetworkDriver.OVERLAY for n in nets}
        self._overlay_networks = frozenset(
            n.name for n in nets if n.driver is NetworkDriver.OVERLAY
        )
        self._known_networks = frozenset(n.name for n in nets)

    def _pass(self, kicked: bool) -> None:
        if kicked:
            self.run_once(cached=True)
            return
        self._periodic += 1
        self.run_once(force=True, reread=self._periodic % REREAD_EVERY == 0, cached=True)

    def run_once(self, force: bool = False, reread: bool = True, cached: bool = False) -> list[Op]:
        """One pass. ``force`` rewrites the port filter even if unchanged;
        without ``reread`` the store's state of the last pass is used;
        ``cached``: read it from the hub's cache (``reads``) once that holds
        the store's latest write."""
        with self._lock:
            if reread or self._desired is None:
                store = self._store
                if cached and self.reads is not None:
                    store = self.reads.caught_up(_CATCH_UP)
                desired, revision, networks = read_desired(
                    store, self._node, self._advertise, self._port, self._single
                )
                self._learn_bridges(networks)
                self._desired = (desired, revision)
            desired, revision = self._desired
            observed = self._dp.observe_overlay()
            ops = plan(desired, observed, None if force else self._digest)
            errors: dict[str, str] = {}
            for op in ops:
                try:
                    apply(self._dp, op)
                except CoveError as exc:
                    target = getattr(op, "name", TABLE)
                    errors.setdefault(str(target), exc.message)
                    log.error("overlay reconcile %s failed: %s", op, exc.message)
                    continue
                if isinstance(op, ReplaceTable):
                    self._digest = op.digest
                elif isinstance(op, DeleteTable):
                    self._digest = None
            if ops:
                log.info("overlay: %d change(s) at revision %d", len(ops), revision)
            self.errors = errors
        with self._cond:
            self._applied = max(self._applied, revision)
            self._cond.notify_all()
        return ops
