"""CNI's parts, assembled by the composition root: the attachment service
behind ``cove-cni`` (its own namespace directory, the container runtime's
port table), and, when ``cni_conf_dir`` is set, the conflists kept in step
with the networks."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cove.clock import Clock
from cove.cni import attachments, conflist
from cove.cni.attachments import AttachmentService
from cove.datapath.netns import NetnsDatapath
from cove.errors import CoveError
from cove.ipam.allocator import Ipam
from cove.model import NETWORKS, Network
from cove.runtime.ports import Published
from cove.runtime.reconcile import ContainerReconciler
from cove.runtime.service import probe_host_port
from cove.store.base import Event, Store
from cove.store.hub import WatchHub
from cove.worker import Worker

log = logging.getLogger(__name__)

_REAP_QUIET = 0.05


class CniParts:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        ipam: Ipam,
        run_dir: Path,
        node: str,
        containers: ContainerReconciler,
        socket: Path,
        conf_dir: Path | None,
        datapath_problem: Callable[[], str | None],
        interval: float = 15.0,
    ) -> None:
        self._store = store
        # Binds of runtimes' namespaces live here for one operation each.
        self.netns = NetnsDatapath(run_dir / "cni-netns")
        self._clean_binds()
        self.service = AttachmentService(
            store,
            ipam,
            self.netns,
            node,
            clock.time,
            ports_changed=containers.sync_ports,
            port_probe=probe_host_port,
            datapath_problem=datapath_problem,
            retired=lambda: self._reaper.kick(),
        )
        # Retired veth pairs are deleted in batches (the kernel takes
        # 15-40 ms per deletion, about as long for many).
        self._reaper = Worker("cove-cni-reaper", lambda _k: self._reap(), interval)
        containers.add_published(self._published)
        self._conf_dir = conf_dir
        self._socket = socket
        self._worker = Worker("cove-cni-conf", lambda _k: self.sync_conflists(), interval)

    def _reap(self) -> None:
        time.sleep(_REAP_QUIET)  # let a burst of DELs retire first
        try:
            self.netns.reap()
        except CoveError as exc:
            log.warning("deleting retired CNI veths: %s", exc.message)

    def _clean_binds(self) -> None:
        for ref in self.netns.list_netns():
            self.netns.delete_netns(ref)

    def _networks(self) -> list[Network]:
        return [Network.from_json(json.loads(kv.value)) for kv in self._store.range(NETWORKS).kvs]

    def _published(self) -> list[Published]:
        nets = {n.name: n for n in self._networks()}
        return attachments.published(self.service.list(), nets)

    def sync_conflists(self) -> None:
        if self._conf_dir is None:
            return
        try:
            conflist.sync(self._conf_dir, self._networks(), self._socket)
        except OSError as exc:
            log.error("cannot write CNI configuration in %s: %s", self._conf_dir, exc)

    def _on_networks(self, _events: Sequence[Event]) -> None:
        self._worker.kick()

    def start(self, hub: WatchHub) -> None:
        self._reaper.start()
        if self._conf_dir is not None:
            hub.subscribe(NETWORKS, self._on_networks)
            self._worker.start()
            self._worker.kick()  # the networks there are already

    def stop(self) -> None:
        self._reaper.stop()
        if self._conf_dir is not None:
            self._worker.stop()
        self.netns.close()
