"""The Consul-compatible HTTP API (/v1/...) over the cove registry.

The agent calls ``install(app, registry, hub=..., runner=...)`` once; the
routes answer in Consul's JSON shapes, status codes and headers, so Consul
clients (py-consul, consul-template, Go's consul/api) work unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from cove.acl import AclService
from cove.acl.model import ROOT as ACL_ROOT
from cove.api import http as web
from cove.api.consul import acl as acl_routes
from cove.api.consul import (
    agent,
    agent_ops,
    catalog,
    config,
    coordinates,
    events,
    intentions,
    kv,
    operator,
    query,
    snapshot,
)
from cove.api.consul.common import CONSUL, Consul
from cove.registry import Registry
from cove.registry import types as t
from cove.registry.blocking import Interests
from cove.registry.runner import CheckRunner
from cove.registry.txn import in_process
from cove.store.base import local_store
from cove.store.group import GroupCommit
from cove.store.hub import WatchHub

log = logging.getLogger(__name__)

__all__ = ["CONSUL", "Consul", "in_process", "install"]


def install(
    app: web.Application,
    registry: Registry,
    *,
    hub: WatchHub,
    runner: CheckRunner | None = None,
    inline: bool | None = None,
    acl: AclService | None = None,
) -> None:
    """Add the /v1 routes to ``app``. Blocking queries learn of changes
    from ``hub`` (the agent's WatchHub, started and stopped by its owner).
    ``runner`` handles TTL updates and starts new
    checks at once; without one, TTL updates are plain status writes.
    ``inline`` calls the registry on the event loop instead of a thread;
    by default it does so exactly when the store is in-process (memory or
    SQLite), where a call takes well under a millisecond; writes are then
    group-committed (``cove.store.group``). ``acl`` (when enabled) makes
    every route judge the request's token; without it tokens are ignored
    and /v1/acl/ answers "ACL support disabled"."""
    if inline is None:
        inline = in_process(registry.store)
    state = Consul(registry, runner, inline)
    if acl is not None and acl.enabled:
        state.acl = acl
    local = local_store(registry.store)
    if inline and local is not None:
        state.commits = GroupCommit(local)
        if runner is not None:  # TTL updates and probe results join the groups
            runner.use_group_commit(state.commits)
    app[CONSUL] = state
    agent.add_routes(app)
    intentions.add_routes(app)  # before agent_ops' /v1/connect catch-all
    agent_ops.add_routes(app)
    events.add_routes(app)
    snapshot.add_routes(app)
    operator.add_routes(app)
    config.add_routes(app)
    coordinates.add_routes(app)
    query.add_routes(app)
    catalog.add_routes(app)
    kv.add_routes(app)
    acl_routes.add_routes(app)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        state.interests = Interests(loop)
        state.hub = hub
        watch_hub = hub
        # Inline: a write committed on this loop wakes its blocking queries
        # right away, with no hub thread in between.
        sub = watch_hub.subscribe(t.ROOT, state.interests.on_events_threadsafe, inline=True)
        # Intentions live under the policy's prefix; their blocking reads too.
        ixn_sub = watch_hub.subscribe(
            intentions.PREFIXES[0], state.interests.on_events_threadsafe, inline=True
        )
        # Another agent's change to an ACL object reaches this one's cache.
        acl_sub = watch_hub.subscribe(ACL_ROOT, state.acl.on_events) if state.acl else None
        try:
            yield
        finally:
            sub.cancel()
            ixn_sub.cancel()
            if acl_sub is not None:
                acl_sub.cancel()

    app.cleanup_ctx.append(lifecycle)
