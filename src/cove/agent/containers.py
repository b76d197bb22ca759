"""The container runtime's parts, assembled by the composition root
(``cove.agent.daemon``) from the store, clock, IPAM and nftables it owns."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from cove.clock import Clock
from cove.cluster.requests import RequestServer
from cove.datapath.base import NftLister
from cove.datapath.libnft import open_nft
from cove.datapath.linkwatch import KernelWatch
from cove.datapath.netns import NetnsDatapath
from cove.errors import CoveError
from cove.image.store import ImageStore
from cove.ipam.allocator import Ipam
from cove.model import ENDPOINTS, NETWORKS
from cove.runtime.client import StateFeed, SupervisorClient
from cove.runtime.intents import IntentLog
from cove.runtime.keys import containers_of
from cove.runtime.reconcile import ContainerReconciler
from cove.runtime.service import ContainerService, no_fault
from cove.runtime.volumes import VolumeStore
from cove.store.base import Store
from cove.store.hub import WatchHub
from cove.worker import Worker

log = logging.getLogger(__name__)


AUTO_REMOVE_INTERVAL = 1.0
FOLLOW_RETRY = 2.0  # seconds between tries to reach the supervisor's feed


class ContainerRuntime:
    """``state_dir/containers/<id>`` holds each container's /etc files and
    log; ``run_dir`` the supervisor (socket, pid file, records) and
    ``run_dir/netns`` the namespace files; ``state_dir/intents`` the runs
    in progress or left to undo."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        ipam: Ipam,
        nft: NftLister,
        state_dir: Path,
        run_dir: Path,
        resolv_conf: Path = Path("/etc/resolv.conf"),
        interval: float = 15.0,
        masked: tuple[Path, ...] = (),
        fault: Callable[[str], None] = no_fault,
        node: str = "",
        prepare_bridge: Callable[[str], None] | None = None,
        hosts_file: Path = Path("/etc/hosts"),
    ) -> None:
        self._resolv_conf = resolv_conf
        self._node = node
        self._hosts_file = hosts_file
        self.netns = NetnsDatapath(run_dir / "netns", prepare_bridge)
        self.supervisor = SupervisorClient(run_dir)
        files = state_dir / "containers"
        self.images = ImageStore(state_dir / "images")
        self.volumes = VolumeStore(state_dir / "volumes", clock)
        self.guard_nft = open_nft()
        self.reconciler = ContainerReconciler(
            store, self.netns, nft, files, self._host_resolv, interval, self.guard_nft, node,
            host_hosts=lambda: _read(self._hosts_file),
        )  # fmt: skip
        self.service = ContainerService(
            store, clock, ipam, self.reconciler, self.supervisor, self.netns, files,
            IntentLog(state_dir / "intents"), masked=masked, fault=fault, node=node,
            images=self.images, volumes=self.volumes,
        )  # fmt: skip
        # Changes other hosts ask of this node's containers (cove rm on h1
        # of a container on h2), carried out here as if asked here.
        self.requests = RequestServer(store, clock, node, self.service.handlers())
        self._requests = Worker(
            "cove-ctr-requests",
            # Kicked by the hub for every request; the periodic pass only
            # expires answers, so it is skipped while there are none.
            lambda kicked: self.requests.run_once() if kicked or not self.requests.idle else 0,
            interval,
            retry=1.0,
        )
        # Failed runs whose rollback could not reach the store are undone
        # as soon as it answers again; starts that could not be finished at
        # start-up (a full disk) are finished once they can be.
        self._undo = Worker(
            "cove-ctr-intents", lambda _k: self.service.retry_unfinished(), interval
        )
        # A container's process exiting, restarting or starting reaches
        # cluster/status/<node>/ (and so the event stream) as the supervisor tells
        # it: one write per change, nothing while nothing changes.
        self._stopping = threading.Event()
        self._feed: StateFeed | None = None
        self._follower = threading.Thread(
            target=self._follow_states, name="cove-ctr-states", daemon=True
        )
        # run --rm: removed within a second of exiting (a no-op with none).
        self._auto_remove = Worker(
            "cove-ctr-autoremove", lambda _k: self.service.remove_exited(), AUTO_REMOVE_INTERVAL
        )
        # The kernel's own notifications of container links, addresses and
        # routes: an idle agent does not read every namespace on a timer.
        self._kernel = KernelWatch(self.reconciler.kernel_changed, self._kernel_lost)

    def _kernel_lost(self) -> None:
        self.reconciler.kernel_watched = False
        self.reconciler.kernel_changed()

    def _host_resolv(self) -> str:
        try:
            return self._resolv_conf.read_text()
        except OSError:
            return ""

    def start(self, hub: WatchHub) -> None:
        """Call after the network reconciler's first pass (bridges exist).
        Subscribes first, so no change between the first pass and the
        subscription is missed."""
        for prefix in (containers_of(self._node), ENDPOINTS, NETWORKS):
            hub.subscribe(prefix, self.reconciler.on_events)
        self.reconciler.watched = True
        self.reconciler.reads = hub.reads
        try:
            self._kernel.start()
        except CoveError as exc:
            log.warning("%s; containers' links are checked on a timer instead", exc.message)
        else:
            self.reconciler.kernel_watched = True
        self.reconciler.start()
        self.service.adopt()
        self._undo.start()
        hub.subscribe(self.requests.prefix, lambda _events: self._requests.kick())
        self._requests.start()
        self._requests.kick()  # what other nodes asked while this agent was down
        self._auto_remove.start()
        self._follower.start()

    def _follow_states(self) -> None:
        while not self._stopping.is_set():
            try:
                self._feed = feed = self.supervisor.follow()
                if self._stopping.is_set():
                    feed.close()  # stop() came between: end at once
                try:
                    # Whatever changed while not following, then each change.
                    self.service.publish_states()
                    for name, state in feed:
                        self.service.publish_state(state, name)
                finally:
                    feed.close()
            except CoveError as exc:
                log.debug("not following the supervisor's states yet: %s", exc.message)
            self._feed = None
            self._stopping.wait(FOLLOW_RETRY)

    def stop(self) -> None:
        """Stops reconciling; containers and the supervisor keep running."""
        self._stopping.set()
        feed = self._feed
        if feed is not None:
            feed.close()
        if self._follower.is_alive():
            self._follower.join(timeout=10)
        self._requests.stop()
        self._undo.stop()
        self._auto_remove.stop()
        self.reconciler.stop()
        self._kernel.stop()
        self.netns.close()
        self.guard_nft.close()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
