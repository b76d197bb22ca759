"""The VIP part of an agent, wired from its dependencies in one place, so
the composition root adds it with a few lines (see ``LbParts``)."""

from __future__ import annotations

from collections.abc import Sequence

from cove.api import http as web
from cove.api import lb as lb_api
from cove.lb.controller import LbController, NftLike
from cove.lb.model import DEFAULT_VIP_RANGES
from cove.lb.registry import RegistryBackends
from cove.lb.vips import VipService
from cove.model import IPNetwork
from cove.store.base import Store
from cove.store.hub import WatchHub


class LbParts:
    """VIP allocation, the programmer of ``inet cove_lb`` and its routes.

    Backends are the registry's passing instances; containers started with
    ``--service`` are registered there with a TCP check, so a container
    that stops answering leaves the VIP like any other failing instance."""

    def __init__(
        self,
        store: Store,
        nft: NftLike,
        vip_ranges: Sequence[IPNetwork] = DEFAULT_VIP_RANGES,
        datacenter: str = "dc1",
    ) -> None:
        self.vips = VipService(store, vip_ranges)
        self.controller = LbController(store, nft, RegistryBackends(store, datacenter))

    def install(self, app: web.Application) -> None:
        lb_api.install(app, self.vips, self.controller)

    def start(self, hub: WatchHub | None = None) -> None:
        self.controller.start(hub)

    def stop(self) -> None:
        self.controller.stop()

    def metrics(self) -> list[tuple[str, str, float]]:
        applied = self.controller.applied
        return [
            ("cove_vips", "Services with a virtual IP.", float(len(applied))),
            (
                "cove_vip_backends",
                "Backends behind all VIPs.",
                float(sum(len(g.backends) for s in applied.values() for g in s.groups)),
            ),
            (
                "cove_vip_errors",
                "1 if the last VIP update failed.",
                1.0 if self.controller.last_error else 0.0,
            ),
        ]
