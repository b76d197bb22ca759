"""Nodes are first-class: each agent keeps a ``NodeRecord`` under
``cluster/nodes/<name>`` alive through a store lease (TTL ``node_ttl``), so
a live node is a present key and a dead agent's node vanishes within its TTL.

A second, lease-free record under ``cluster/known/<name>`` remembers every
node that ever joined and whether it left cleanly, so ``cove members`` can
tell a node that left (``left``) from one whose lease ran out (``failed``).

Two live agents cannot claim one name: joining is a compare-and-swap on the
absent key. An agent restarted after a crash finds its own previous record
(the lease id it saved in its state directory) and takes it over instead of
waiting for the lease to run out.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cove.errors import CoveError, InvalidArgument, NotFound, StorageFull
from cove.model import CONTAINERS
from cove.store.base import Compare, Delete, Put, Store, local_store

log = logging.getLogger(__name__)

CLUSTER_NODES = "cluster/nodes/"
CLUSTER_KNOWN = "cluster/known/"

ALIVE = "alive"
LEFT = "left"
FAILED = "failed"


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class NodeRecord:
    name: str
    advertise: str
    version: str
    features: tuple[str, ...] = ()
    started: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "advertise": self.advertise,
            "version": self.version,
            "features": list(self.features),
            "started": self.started,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NodeRecord:
        return cls(
            name=str(data["name"]),
            advertise=str(data.get("advertise") or ""),
            version=str(data.get("version") or ""),
            features=tuple(str(f) for f in data.get("features") or ()),
            started=str(data.get("started") or ""),
        )


@dataclass(frozen=True, slots=True)
class Member:
    """One row of ``cove members``."""

    name: str
    advertise: str
    status: str  # alive | left | failed
    version: str = ""
    containers: int = 0
    features: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "advertise": self.advertise,
            "status": self.status,
            "version": self.version,
            "containers": self.containers,
            "features": list(self.features),
        }


def _encode(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True).encode()


def live_nodes(store: Store) -> dict[str, NodeRecord]:
    """The nodes whose agent is alive, by name."""
    out: dict[str, NodeRecord] = {}
    for kv in store.range(CLUSTER_NODES).kvs:
        try:
            rec = NodeRecord.from_json(json.loads(kv.value))
        except (ValueError, KeyError):
            continue
        out[rec.name] = rec
    return out


def is_alive(store: Store, name: str) -> bool:
    return store.get(CLUSTER_NODES + name) is not None


def members(store: Store, local_node: str = "") -> list[Member]:
    """Every node that ever joined, with its status and container count.
    Containers without a node (older records) count for ``local_node``."""
    live = live_nodes(store)
    known: dict[str, Mapping[str, Any]] = {}
    for kv in store.range(CLUSTER_KNOWN).kvs:
        try:
            data = json.loads(kv.value)
            known[str(data["name"])] = data
        except (ValueError, KeyError):
            continue
    counts: dict[str, int] = {}
    # Keys only: a record's node is in its key (containers/<node>/<name>),
    # but in the few of the layout before (containers/<name>).
    for k in store.keys(CONTAINERS).kvs:
        rest = k.key[len(CONTAINERS) :]
        if "/" in rest:
            node = rest.split("/", 1)[0] or local_node
        else:
            old = store.get(k.key)
            try:
                node = (json.loads(old.value).get("node") if old else None) or local_node
            except ValueError:
                continue
        counts[node] = counts.get(node, 0) + 1
    out: list[Member] = []
    for name in sorted(set(live) | set(known)):
        rec = live.get(name)
        if rec is not None:
            status, advertise, version, features = ALIVE, rec.advertise, rec.version, rec.features
        else:
            data = known[name]
            status = LEFT if data.get("left") else FAILED
            advertise = str(data.get("advertise") or "")
            version = str(data.get("version") or "")
            features = tuple(data.get("features") or ())
        out.append(Member(name, advertise, status, version, counts.get(name, 0), features))
    return out


class NodeLease:
    """This agent's node record and the lease that keeps it alive.

    ``join`` claims the name (``InvalidArgument``, exit 2, when a live agent
    holds it; nothing is written then); a thread renews the lease every
    third of the TTL, and joins again if the lease was lost (the store was
    unreachable for longer than the TTL, or the node was removed with
    ``cove members rm --force``); ``stop(leave=True)`` marks the node as
    left and deletes its record.

    The lease is the node's only one: the catalog's serfHealth check rides
    on it too (``on_lease`` tells the registry each new lease), so a node
    costs one keep-alive per renewal period. A clean stop deletes the
    record but lets the lease run out on its own, so an agent restart does
    not flap the node's services to critical.

    On a local store (SQLite) whose disk is full the agent still starts,
    read-only: ``join`` warns and the thread joins once space returns. A
    shared store (etcd) never skips the join: there the name check is what
    keeps two agents from claiming one name."""

    def __init__(
        self,
        store: Store,
        record: NodeRecord,
        ttl: int,
        lease_file: Path,
    ) -> None:
        self._store = store
        self.record = record
        self.ttl = ttl
        self._lease_file = lease_file
        self.lease = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.joined = False
        self._lease_listeners: list[Callable[[int], None]] = []
        self._rejoin_listeners: list[Callable[[], object]] = []

    def on_lease(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(lease)`` with each new lease (a join or rejoin,
        from the renewal thread): keys tied to the node's life follow it."""
        self._lease_listeners.append(callback)

    def on_rejoin(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` after the running agent joined again with a
        new lease (its record was gone: the lease ran out, or the node was
        removed): what the store no longer has is stale here."""
        self._rejoin_listeners.append(callback)

    def _tell(self, lease: int, *, rejoined: bool) -> None:
        for listener in self._lease_listeners:
            try:
                listener(lease)
            except Exception:  # a listener's bug must not stop the renewals
                log.exception("node %s: a lease listener failed", self.record.name)
        if not rejoined:
            return
        for callback in self._rejoin_listeners:
            try:
                callback()
            except Exception:
                log.exception("node %s: a rejoin listener failed", self.record.name)

    @property
    def key(self) -> str:
        return CLUSTER_NODES + self.record.name

    def _saved_lease(self) -> int:
        try:
            return int(self._lease_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def join(self) -> None:
        """Claim the node name. ``InvalidArgument`` when a live agent holds
        it; on a full local disk, a warning and a later retry instead of
        ``StorageFull``."""
        try:
            self._join()
        except StorageFull as exc:
            if local_store(self._store) is None:
                raise
            log.warning(
                "node %s cannot join yet: %s; the agent starts read-only and joins"
                " once space is freed",
                self.record.name,
                exc.message,
            )

    def _join(self) -> None:
        key = self.key
        # The name check reads only, so a full disk cannot skip it.
        current = self._store.get(key)
        compares = [Compare.absent(key)]
        if current is not None:
            previous = self._saved_lease()
            if not previous or current.lease != previous:
                raise InvalidArgument(
                    f"node name {self.record.name!r} is taken by a live agent"
                    f" (advertising {_advertise_of(current.value)}): give this agent"
                    " another --node-name, or stop the other agent first",
                    node=self.record.name,
                )
            # Our own record from before a crash: take it over.
            compares = [Compare.mod_is(key, current.mod_revision)]
        lease = self._store.lease_grant(self.ttl)
        value = _encode(self.record.to_json())
        try:
            ok = self._store.txn(
                compares,
                [
                    Put(key, value, lease),
                    Put(CLUSTER_KNOWN + self.record.name, _encode(self._known(left=False))),
                ],
            ).succeeded
            if not ok:
                raise InvalidArgument(
                    f"node name {self.record.name!r} was just claimed by another agent:"
                    " give this agent another --node-name",
                    node=self.record.name,
                )
        except BaseException:
            self._revoke(lease)
            raise
        # The lease of our record from before a crash is left to run out:
        # the node's serfHealth still rides on it until the registry moves
        # it to the new one, so a restart does not flap its services.
        self.lease = lease
        self.joined = True
        self._save(lease)
        self._tell(lease, rejoined=False)
        log.info(
            "joined the cluster as node %s (advertise %s, node TTL %ss)",
            self.record.name,
            self.record.advertise,
            self.ttl,
        )

    def _known(self, *, left: bool) -> dict[str, Any]:
        return {**self.record.to_json(), "left": left}

    def _save(self, lease: int) -> None:
        try:
            self._lease_file.write_text(f"{lease}\n")
        except OSError as exc:
            log.warning("cannot save the node lease to %s: %s", self._lease_file, exc)

    def _revoke(self, lease: int) -> None:
        try:
            self._store.lease_revoke(lease)
        except CoveError as exc:
            log.debug("cannot revoke lease %s: %s", lease, exc.message)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="cove-node-lease", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        period = max(self.ttl / 3.0, 0.5)
        while not self._stop.wait(period):
            if not self.joined:
                self._retry_join()
                continue
            try:
                self._store.lease_keepalive(self.lease)
            except NotFound:
                if self._stop.is_set():
                    return
                log.warning("node %s: its lease ran out; joining again", self.record.name)
                try:
                    self._rejoin()
                except CoveError as exc:
                    log.error("node %s cannot rejoin: %s", self.record.name, exc.message)
            except CoveError as exc:
                log.warning("node %s: cannot renew its lease: %s", self.record.name, exc.message)

    def _retry_join(self) -> None:
        """The join a full disk put off at start."""
        try:
            self._join()
        except StorageFull:
            log.debug("node %s: the disk is still full; joining later", self.record.name)
        except CoveError as exc:
            log.error("node %s cannot join: %s", self.record.name, exc.message)

    def _rejoin(self) -> None:
        lease = self._store.lease_grant(self.ttl)
        ok = self._store.txn(
            [Compare.absent(self.key)],
            [
                Put(self.key, _encode(self.record.to_json()), lease),
                # Written again: a removed node (cove members rm) has none.
                Put(CLUSTER_KNOWN + self.record.name, _encode(self._known(left=False))),
            ],
        ).succeeded
        if not ok:
            self._revoke(lease)
            raise InvalidArgument(f"node name {self.record.name!r} was taken meanwhile")
        self.lease = lease
        self._save(lease)
        log.info("node %s joined again (lease %x)", self.record.name, lease)
        self._tell(lease, rejoined=True)

    def stop(self, *, leave: bool = True) -> None:
        """Stop renewing; with ``leave``, mark the node as left and delete
        its record now (a clean shutdown). The lease runs out on its own
        either way: the node's serfHealth rides on it, and a restart within
        the TTL keeps the node's services from flapping to critical."""
        self._stop.set()
        if self._thread is not None:
            # A renewal waiting on an unreachable store must not hold
            # shutdown for its whole timeout: the thread is a daemon.
            self._thread.join(timeout=1)
        lease, self.lease = self.lease, 0
        if not leave or not lease:
            return
        try:
            known = Put(CLUSTER_KNOWN + self.record.name, _encode(self._known(left=True)))
            current = self._store.get(self.key)
            if current is None or current.lease != lease:
                # Not our record any more (removed with cove members rm,
                # maybe claimed by another agent since): nothing to mark.
                log.info("node %s: its record is gone; leaving without a mark", self.record.name)
                return
            self._store.txn(
                [Compare.mod_is(self.key, current.mod_revision)], [known, Delete(self.key)]
            )
        except CoveError as exc:
            # The store did not take the first write: do not wait on it a
            # second time; the lease runs out on its own within the TTL.
            log.warning(
                "cannot record that node %s left: %s; it shows as failed once its"
                " lease (TTL %ss) runs out",
                self.record.name,
                exc.message,
                self.ttl,
            )


def _advertise_of(raw: bytes) -> str:
    try:
        return str(json.loads(raw).get("advertise") or "?")
    except ValueError:
        return "?"


def owned(node: str, local_node: str) -> bool:
    """Whether a record with ``node`` belongs to the agent of
    ``local_node`` (an empty node is an older, single-host record)."""
    return not node or node == local_node


def features_of(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(set(names)))
