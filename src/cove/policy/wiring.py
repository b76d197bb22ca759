"""The policy part of an agent, wired in one place (see ``PolicyParts``)."""

from __future__ import annotations

from cove.api import http as web
from cove.api import policy as policy_api
from cove.clock import Clock
from cove.lb.controller import NftLike
from cove.policy.controller import PolicyController
from cove.policy.service import PolicyService
from cove.store.base import Store
from cove.store.hub import WatchHub


class PolicyParts:
    def __init__(self, store: Store, nft: NftLike, clock: Clock) -> None:
        self.service = PolicyService(store, clock)
        self.controller = PolicyController(store, nft, clock=clock)

    def install(self, app: web.Application) -> None:
        policy_api.install(app, self.service, self.controller)

    def start(self, hub: WatchHub | None = None) -> None:
        self.controller.start(hub)

    def stop(self) -> None:
        self.controller.stop()

    def metrics(self) -> list[tuple[str, str, float]]:
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
