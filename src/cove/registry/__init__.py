"""The service registry: catalog, health checks, KV and sessions, all kept
in the store under ``registry/`` so one agent (SQLite) and a cluster (etcd)
behave alike. The Consul HTTP API (``cove.api.consul``) is its front door.

``Registry`` composes the parts; the agent builds one per node and starts a
``CheckRunner`` for the checks this node owns::

    registry = Registry(store, clock, node_name="host1", datacenter="dc1")
    runner = CheckRunner(registry, hub=hub)
    await runner.start()
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from cove.clock import Clock
from cove.errors import NotFound
from cove.registry import types
from cove.registry.catalog import Catalog
from cove.registry.config_entries import ConfigEntries
from cove.registry.coordinates import Coordinates
from cove.registry.decode import check_from_json
from cove.registry.events import Events
from cove.registry.kv import KV
from cove.registry.prepared import PreparedQueries
from cove.registry.queries import Answer, Queries
from cove.registry.sessions import Sessions
from cove.registry.types import Node, ServiceInstance, Status
from cove.store.base import Store

log = logging.getLogger(__name__)

__all__ = ["Answer", "Registry", "Status"]

VERSION = types.CONSUL_VERSION  # the Consul version whose API we answer as


class Registry:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        node_name: str,
        datacenter: str = "dc1",
        *,
        node_address: str = "127.0.0.1",
        node_id: str = "",
        node_meta: dict[str, str] | None = None,
        enable_script_checks: bool = False,
        consul_service: bool = True,
    ) -> None:
        self.store = store
        self.clock = clock
        self.datacenter = datacenter
        self.enable_script_checks = enable_script_checks
        self.node = Node(
            name=node_name,
            address=node_address,
            datacenter=datacenter,
            id=node_id,
            tagged_addresses={"lan": node_address, "wan": node_address},
            meta=dict(node_meta or {}),
        )
        # The agent shows itself in the catalog as Consul's `consul` service.
        self.catalog = Catalog(store, clock, self.node, consul_service=consul_service)
        self.queries = Queries(store, datacenter)
        self.kv = KV(store, clock)
        self.sessions = Sessions(store, clock, self.kv, node_name)
        self.events = Events(store, clock)
        self.config = ConfigEntries(store)
        self.coordinates = Coordinates(store)
        self.prepared = PreparedQueries(store)

    @property
    def node_name(self) -> str:
        return self.node.name

    @property
    def agent_checks_prefix(self) -> str:
        return f"{types.AGENT}{types.seg(self.node.name)}/chk/"

    # -- for `cove run --service` -------------------------------------------

    def register_container(
        self,
        service_id: str,
        name: str,
        address: str,
        port: int,
        tags: Sequence[str] = (),
        *,
        interval: str = "10s",
        meta: dict[str, str] | None = None,
    ) -> int:
        """Register a container's service instance on this node with a TCP
        check on ``address:port``; returns the store revision. Raises
        ``InvalidArgument`` for a bad name or port."""
        inst = ServiceInstance(
            id=service_id,
            name=name,
            node=self.node.name,
            address=address,
            port=port,
            tags=tuple(tags),
            meta=dict(meta or {}),
        )
        host = f"[{address}]" if ":" in address else address
        check = check_from_json(
            {"CheckID": f"service:{service_id}", "TCP": f"{host}:{port}", "Interval": interval},
            default_name=f"Service '{name}' check",
            service=inst,
        )
        return self.catalog.register_service(inst, [check])

    def deregister_container(self, service_id: str) -> bool:
        """Remove a container's instance and its checks; False when it was
        not registered (a stop after a failed start)."""
        try:
            self.catalog.deregister_service(service_id)
        except NotFound:
            return False
        return True
