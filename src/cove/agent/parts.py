"""The VIP and policy parts of an agent, assembled from dependencies the
composition root (``cove.agent.daemon``) passes in. Their HTTP routes are
installed by ``cove.api.lb`` and ``cove.api.policy``; nothing here reaches
the API, so the domain packages never import it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cove.clock import Clock
from cove.datapath.nftables import Nft
from cove.datapath.sysctl import bridge_filtering_problem
from cove.errors import CoveError
from cove.lb.controller import LbController, NftLike
from cove.lb.registry import RegistryBackends
from cove.lb.vips import VipService
from cove.model import IPNetwork
from cove.policy import compile as policy_compile
from cove.policy.controller import PolicyController
from cove.policy.service import PolicyService
from cove.store.base import Store
from cove.store.hub import WatchHub

Metric = tuple[str, str, float]


class LbParts:
    """VIP allocation and the programmer of ``inet cove_lb``.

    Backends are the registry's passing instances; containers started with
    ``--service`` are registered there with a TCP check, so a container
    that stops answering leaves the VIP like any other failing instance."""

    def __init__(
        self,
        store: Store,
        nft: NftLike,
        clock: Clock,
        vip_ranges: Sequence[IPNetwork],
        datacenter: str,
    ) -> None:
        self.vips = VipService(store, vip_ranges)
        self.controller = LbController(store, nft, RegistryBackends(store, datacenter), clock=clock)

    def start(self, hub: WatchHub) -> None:
        self.controller.start(hub)

    def stop(self) -> None:
        self.controller.stop()

    def metrics(self) -> list[Metric]:
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


class PolicyParts:
    """Policy rules and the programmer of ``inet cove_policy``."""

    def __init__(self, store: Store, nft: NftLike, clock: Clock, node: str | None = None) -> None:
        self.service = PolicyService(store, clock, node)
        self.controller = PolicyController(
            store, nft, clock=clock, bridge_check=bridge_filtering_problem, node=node
        )

        self._nft = nft
        self._list: Callable[[str, str], list[dict[str, Any]]] | None = None

    def start(self, hub: WatchHub) -> None:
        self.controller.start(hub)

    def stop(self) -> None:
        self.controller.stop()

    def counts(self) -> list[policy_compile.Count]:
        """Packets each intention and each network's default deny counted
        (read back from the kernel table; empty when it cannot be read)."""
        try:
            if self._list is None:
                # The fast (in-process) binding may not list; the nft program does.
                found = getattr(self._nft, "list_table", None)
                self._list = found if callable(found) else Nft().list_table
            listed = self._list(policy_compile.FAMILY, policy_compile.TABLE)
        except CoveError:
            return []
        return policy_compile.counters(listed)

    def metrics(self) -> list[Metric]:
        return [
            (
                "cove_policy_rules",
                "Policy rules in the store.",
                float(len(self.service.rules())),
            ),
            (
                "cove_policy_bridge_filtering",
                "1 if br_netfilter lets policy see traffic inside one bridge.",
                0.0 if self.controller.warning else 1.0,
            ),
            (
                "cove_policy_errors",
                "1 if the last policy update failed.",
                1.0 if self.controller.last_error else 0.0,
            ),
        ]
