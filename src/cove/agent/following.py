"""Which networks' endpoints and addresses an agent on etcd follows.

An agent needs another host's endpoint only on a network it has an endpoint
on itself: to answer its containers' DNS, to program overlay forwarding and
to compile policy. So the hub holds ``endpoints/`` and ``ipam/`` in parts
(``WatchHub.follow``), per network this node has an endpoint on:

- an overlay network: all of ``endpoints/<net>/`` (every host's);
- a bridge network (host-local in a cluster): ``endpoints/<net>/<node>/``;
- either: ``ipam/<net>/`` (where this node chooses its addresses).

A network is followed from this agent's first write under it (the hub asks
``widen`` before the write returns, so a pass never misses the agent's
own endpoint) and at start-up for every network this node has an endpoint
on (one small read per network). It is left ``grace`` seconds after this
node's last endpoint on it went, so that the endpoints of a container
being replaced are not dropped and read again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence

from cove.errors import CoveError
from cove.model import IPAM, NETWORKS, NetworkDriver, endpoints_in, endpoints_of, network_of
from cove.store.base import Store
from cove.store.hub import WatchHub
from cove.worker import Worker

log = logging.getLogger(__name__)

GRACE = 30.0  # seconds a network is kept after this node's last endpoint on it


class NetworkFollowing:
    """Keeps the hub's followed parts to the networks this node is on."""

    def __init__(
        self,
        hub: WatchHub,
        node: str,
        *,
        grace: float = GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hub = hub
        self._reads: Store = hub.reads
        self._node = node
        self._grace = grace
        self._clock = clock
        self._lock = threading.Lock()
        self._last_seen: dict[str, float] = {}  # network -> when this node was last on it
        self._wanted: set[str] = set()  # asked for by a write, maybe not followed yet
        self._worker = Worker("cove-following", self._pass, interval=max(grace / 3, 0.5))

    def parts(self, network: str) -> tuple[str, ...]:
        """What to follow of ``network``; all of it while its record is
        unknown (a superset is never wrong)."""
        driver = self._driver(network) or NetworkDriver.OVERLAY.value
        if driver == NetworkDriver.BRIDGE.value:
            endpoints = endpoints_of(network, self._node)
        else:
            endpoints = endpoints_in(network)
        return (endpoints, f"{IPAM}{network}/")

    def _driver(self, network: str) -> str | None:
        kv = self._reads.get(NETWORKS + network)
        if kv is None:
            return None
        try:
            return str(json.loads(kv.value).get("driver") or NetworkDriver.BRIDGE.value)
        except (ValueError, AttributeError):
            return None

    def widen(self, key: str) -> Sequence[str]:
        """The hub's question on a write under a part not followed."""
        network = network_of(key)
        if not network:
            return ()
        with self._lock:
            self._wanted.add(network)
            self._last_seen[network] = self._clock()
        return self.parts(network)

    def start(self) -> None:
        """Follow every network this node has an endpoint on, then keep
        following what it writes (before any pass reads the endpoints)."""
        self._hub.widen = self.widen
        now = self._clock()
        for kv in self._reads.keys(NETWORKS).kvs:
            network = kv.key[len(NETWORKS) :]
            if self._hub.writes.keys(endpoints_of(network, self._node)).kvs:
                with self._lock:
                    self._wanted.add(network)
                    self._last_seen[network] = now
        with self._lock:
            wanted = sorted(self._wanted)
        for network in wanted:
            self._follow(network)
        self._hub.subscribe(NETWORKS, lambda _events: self._worker.kick())
        self._worker.start()

    def stop(self) -> None:
        self._hub.widen = None
        self._worker.stop()

    def _follow(self, network: str) -> None:
        try:
            self._hub.follow(self.parts(network))
        except CoveError as exc:  # the store is away: the next pass retries
            log.warning("cannot follow network %s yet: %s", network, exc.message)

    def _pass(self, _kicked: bool) -> None:
        """Follow what is wanted, as each network's driver says; leave the
        networks this node has had no endpoint on for ``grace`` seconds."""
        now = self._clock()
        followed = self._hub.followed
        with self._lock:
            networks = {network_of(p) for p in followed} | self._wanted
        for network in sorted(networks):
            ours = [p for p in followed if network_of(p) == network]
            if self._reads.keys(endpoints_of(network, self._node)).kvs:
                with self._lock:
                    self._last_seen[network] = now
            with self._lock:
                gone = now - self._last_seen.get(network, now) > self._grace
                if gone:
                    self._wanted.discard(network)
                    self._last_seen.pop(network, None)
            if gone:
                self._hub.unfollow(ours)
            elif set(self.parts(network)) - set(ours) and (self._driver(network) or not ours):
                self._follow(network)  # new, or its driver changed: replaces what overlaps
