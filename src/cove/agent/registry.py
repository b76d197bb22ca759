"""The registry part of an agent: the ``Registry`` over the store, the
runner of this node's checks and the Consul routes (``/v1``). The agent and
the standalone Consul server (``cove.agent.consul``) both assemble it here,
so the Consul compatibility tests run the wiring the agent runs."""

from __future__ import annotations

import asyncio

from cove.acl import AclService
from cove.api import consul as consul_api
from cove.api import http as web
from cove.clock import Clock
from cove.registry import Registry
from cove.registry.runner import LEASE_TTL, CheckRunner, NodeLeaseSource
from cove.registry.txn import in_process
from cove.store.base import Store
from cove.store.hub import WatchHub


class RegistryParts:
    """``checks`` is None when ``run_checks`` is false (tests that set
    check states by hand); the node is then registered at ``start``."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        hub: WatchHub,
        *,
        node_name: str,
        datacenter: str,
        node_address: str,
        enable_script_checks: bool,
        acl: AclService | None,
        run_checks: bool = True,
        lease_ttl: int = LEASE_TTL,
        node_lease: NodeLeaseSource | None = None,
    ) -> None:
        self.registry = Registry(
            store,
            clock,
            node_name,
            datacenter,
            node_address=node_address,
            enable_script_checks=enable_script_checks,
        )
        self._hub = hub
        self._acl = acl
        # In-process stores (memory, SQLite) answer in well under a
        # millisecond: the routes call them on the event loop.
        self.inline = in_process(store)
        self.checks: CheckRunner | None = None
        if run_checks:
            self.checks = CheckRunner(
                self.registry,
                hub=hub,
                enable_script_checks=enable_script_checks,
                inline=self.inline,
                lease_ttl=lease_ttl,
                node_lease=node_lease,
            )

    def install(self, app: web.Application) -> None:
        """Add the ``/v1`` routes to ``app``."""
        consul_api.install(
            app,
            self.registry,
            hub=self._hub,
            runner=self.checks,
            inline=self.inline,
            acl=self._acl,
        )

    async def start(self) -> None:
        """Register this node and start running its checks (on the
        serving loop)."""
        if self.checks is not None:
            await self.checks.start()
        else:
            await asyncio.to_thread(self.registry.catalog.ensure_node)

    async def stop(self) -> None:
        if self.checks is not None:
            await self.checks.stop()
