"""Reconcile networks: a pure plan from (desired, observed), and a runner
that applies it at start-up, on every store change and periodically.

Because the plan is derived from the whole desired state and the whole
observed state every time, a crash at any point converges on the next run:
missing bridges, addresses and rules come back, and cove bridges the store
no longer knows are removed.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cove.datapath.base import Interface, NetworkDatapath, Observed
from cove.errors import CoveError
from cove.model import NETWORKS, Network, NetworkDriver
from cove.network import firewall
from cove.store.base import RangeResult, Store
from cove.worker import Worker

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CreateBridge:
    name: str
    mtu: int


@dataclass(frozen=True, slots=True)
class DeleteLink:
    name: str


@dataclass(frozen=True, slots=True)
class SetMtu:
    name: str
    mtu: int


@dataclass(frozen=True, slots=True)
class SetUp:
    name: str


@dataclass(frozen=True, slots=True)
class AddAddress:
    name: str
    address: Interface


@dataclass(frozen=True, slots=True)
class DeleteAddress:
    name: str
    address: Interface


@dataclass(frozen=True, slots=True)
class ReplaceTable:
    objects: tuple[dict[str, Any], ...]
    digest: str


Op = CreateBridge | DeleteLink | SetMtu | SetUp | AddAddress | DeleteAddress | ReplaceTable


TABLE_TARGET = "nft:inet cove"


def _target(op: Op) -> str:
    return TABLE_TARGET if isinstance(op, ReplaceTable) else op.name


def gateway_interfaces(network: Network) -> frozenset[Interface]:
    return frozenset(
        ipaddress.ip_interface(f"{s.gateway}/{s.cidr.prefixlen}") for s in network.subnets
    )


def plan(networks: Iterable[Network], observed: Observed, applied_digest: str | None) -> list[Op]:
    """The operations that make the kernel match ``networks``. Order matters:
    the nft table goes first so that a removed network's isolation and NAT
    rules disappear before its bridge does, and are in place before a new
    bridge carries traffic."""
    nets = sorted(networks, key=lambda n: n.name)
    ops: list[Op] = []
    objs = firewall.compile_table(nets)
    dig = firewall.digest(objs)
    if dig != applied_digest or (firewall.FAMILY, firewall.TABLE) not in observed.nft_tables:
        ops.append(ReplaceTable(tuple(objs), dig))
    wanted = {n.bridge: n for n in nets}
    for name in sorted(observed.bridges):
        if name not in wanted:
            ops.append(DeleteLink(name))
    for net in nets:
        if net.driver is NetworkDriver.OVERLAY:
            continue  # only on hosts with an endpoint on it: network/overlay.py
        have = observed.bridges.get(net.bridge)
        want_addrs = gateway_interfaces(net)
        if have is None:
            ops.append(CreateBridge(net.bridge, net.mtu))
            ops.extend(AddAddress(net.bridge, a) for a in sorted(want_addrs, key=str))
            ops.append(SetUp(net.bridge))
            continue
        if have.mtu != net.mtu:
            ops.append(SetMtu(net.bridge, net.mtu))
        for extra in sorted(have.addresses - want_addrs, key=str):
            ops.append(DeleteAddress(net.bridge, extra))
        for missing in sorted(want_addrs - have.addresses, key=str):
            ops.append(AddAddress(net.bridge, missing))
        if not have.up:
            ops.append(SetUp(net.bridge))
    return ops


def apply(datapath: NetworkDatapath, op: Op) -> None:
    match op:
        case CreateBridge(name, mtu):
            datapath.create_bridge(name, mtu)
        case DeleteLink(name):
            datapath.delete_link(name)
        case SetMtu(name, mtu):
            datapath.set_mtu(name, mtu)
        case SetUp(name):
            datapath.set_up(name)
        case AddAddress(name, address):
            datapath.add_address(name, address)
        case DeleteAddress(name, address):
            datapath.delete_address(name, address)
        case ReplaceTable(objects, _):
            datapath.replace_table(firewall.FAMILY, firewall.TABLE, objects)


class NetworkReconciler:
    """Runs ``plan``/``apply`` on its own thread, woken by ``kick()`` (store
    events) or every ``interval`` seconds. ``wait_applied`` lets the API
    answer only once the kernel matches a write."""

    def __init__(self, store: Store, datapath: NetworkDatapath, interval: float = 15.0) -> None:
        self._store = store
        self._datapath = datapath
        self._interval = interval
        self._cond = threading.Condition()  # guards _applied
        self._pass_lock = threading.Lock()
        self._applied = 0
        self._digest: str | None = None
        # The periodic pass rewrites the nft table even if nothing changed,
        # so rules someone deleted by hand come back.
        # Set by whoever kicks this on every change of the networks (the
        # agent, from its hub): the periodic pass then reuses the last read.
        self.watched = False
        self._last: tuple[RangeResult, list[Network]] | None = None
        self._worker = Worker(
            "cove-net-reconcile", lambda kicked: self.run_once(force=not kicked), interval
        )
        # Errors of the last pass by what they concern (a bridge name, or
        # TABLE_TARGET), so one broken network does not fail every request.
        self.errors: dict[str, str] = {}

    @property
    def last_error(self) -> str | None:
        """One error of the last pass, if it had any."""
        return next(iter(self.errors.values()), None)

    def error_for(self, bridge: str) -> str | None:
        """Why the last pass could not make ``bridge`` (or cove's nft table,
        which every network needs) match the store; None when it could."""
        return self.errors.get(bridge) or self.errors.get(TABLE_TARGET)

    def start(self) -> None:
        self._datapath.enable_forwarding()
        self.run_once()
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()

    def kick(self) -> None:
        self._worker.kick()

    @property
    def applied_revision(self) -> int:
        return self._applied

    def wait_applied(self, revision: int, timeout: float) -> bool:
        with self._cond:
            if self._applied >= revision:
                return True
        # The store event kicks a pass too; kicking here saves waiting for
        # its delivery. A pass that already covered the write is not repeated.
        self.kick()
        with self._cond:
            return self._cond.wait_for(lambda: self._applied >= revision, timeout=timeout)

    def run_once(self, force: bool = False) -> list[Op]:
        with self._pass_lock:
            return self._run_once(force)

    def _run_once(self, force: bool) -> list[Op]:
        if force and self.watched and self._last is not None:
            # The periodic pass of a reconciler the hub kicks on every
            # change: the networks are those of the last read; only the
            # kernel is looked at again.
            result, networks = self._last
        else:
            result = self._store.range(NETWORKS)
            networks = [Network.from_json(json.loads(kv.value)) for kv in result.kvs]
            self._last = (result, networks)
        observed = self._datapath.observe()
        ops = plan(networks, observed, None if force else self._digest)
        errors: dict[str, str] = {}
        for op in ops:
            try:
                apply(self._datapath, op)
            except CoveError as exc:
                errors.setdefault(_target(op), exc.message)
                log.error("reconcile %s failed: %s", op, exc.message)
                continue
            if isinstance(op, ReplaceTable):
                self._digest = op.digest
        if ops:
            log.info(
                "reconciled %d network(s) at revision %d: %d change(s)",
                len(networks),
                result.revision,
                len(ops),
            )
        self.errors = errors
        with self._cond:
            self._applied = max(self._applied, result.revision)
            self._cond.notify_all()
        return ops
