"""Native API for networks: /api/networks.

A create or remove answers once the kernel matches the store (the
reconciler has applied the write), so a CLI user who sees success can use
the bridge at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from cove.api import http as web
from cove.api.app import json_body
from cove.errors import AlreadyExists, DatapathError, InvalidArgument
from cove.ipam.blocks import Block
from cove.model import Endpoint, Network
from cove.network.reconcile import NetworkReconciler
from cove.network.service import NetworkService
from cove.network.spec import NetworkSpec
from cove.runtime.spec import DEFAULT_NETWORK
from cove.timefmt import parse_time, rfc3339

APPLY_TIMEOUT = 10.0
DEFAULT_LABEL = "cove.default"


def network_json(
    network: Network,
    endpoints: Sequence[Endpoint] | None = None,
    blocks: Sequence[Block] | None = None,
) -> dict[str, Any]:
    """A network as create, ls and inspect send it; inspect adds its endpoints
    and its address blocks with their nodes. ``created`` is RFC 3339, as
    Docker shows it."""
    out = network.to_json()
    out["created"] = rfc3339(network.created)
    if endpoints is not None:
        out["endpoints"] = [endpoint_json(ep) for ep in endpoints]
    if blocks is not None:
        out["blocks"] = [b.to_json() for b in blocks]
    return out


def endpoint_json(ep: Endpoint) -> dict[str, Any]:
    # Keys sorted: inspect sent the stored JSON as it was, written with sort_keys.
    return dict(sorted(ep.to_json().items()))


def prune_filter(filters: Sequence[str], now: float) -> Callable[[Network], bool]:
    """What ``network prune --filter`` keeps, as Docker has it: ``label=K``,
    ``label=K=V``, ``label!=K[=V]`` and ``until=DURATION|RFC3339|UNIX``
    (prune only networks created before). ``InvalidArgument`` otherwise."""
    tests: list[Callable[[Network], bool]] = []  # each: True to prune
    for f in filters:
        key, sep, value = f.partition("=")
        negate = key.endswith("!")
        key = key.rstrip("!")
        if not sep or not value or key not in ("label", "until") or (negate and key != "label"):
            raise InvalidArgument(
                f"invalid filter {f!r}: use label=KEY[=VALUE], label!=KEY[=VALUE] or until=TIME"
            )
        if key == "label":
            tests.append(_label_test(value, negate))
        else:
            tests.append(_before(parse_time(value, now)))
    return lambda n: not all(t(n) for t in tests)


def _before(cutoff: float) -> Callable[[Network], bool]:
    return lambda n: n.created < cutoff


def _label_test(value: str, negate: bool) -> Callable[[Network], bool]:
    k, has_v, v = value.partition("=")

    def test(n: Network) -> bool:
        hit = k in n.labels and (not has_v or n.labels[k] == v)
        return hit != negate

    return test


def default_network(
    networks: NetworkService, reconciler: NetworkReconciler, name: str = DEFAULT_NETWORK
) -> Callable[[], Awaitable[None]]:
    """A coroutine that creates the default network (``bridge``, as Docker's)
    the first time a container needs it, and answers once the kernel has it."""

    async def ensure() -> None:
        exists = await asyncio.to_thread(networks.exists, name)
        if exists:
            return
        spec = NetworkSpec(name=name, labels={DEFAULT_LABEL: "true"})
        try:
            network, revision = await asyncio.to_thread(networks.create, spec)
        except AlreadyExists:
            return  # a concurrent run made it
        ok = await asyncio.to_thread(reconciler.wait_applied, revision, APPLY_TIMEOUT)
        if not ok or reconciler.error_for(network.bridge):
            raise DatapathError(
                f"the default network {name} could not be set up: see the agent's log,"
                " or give a --network"
            )

    return ensure


def install(app: web.Application, networks: NetworkService, reconciler: NetworkReconciler) -> None:
    async def settle(revision: int, bridge: str) -> None:
        ok = await asyncio.to_thread(reconciler.wait_applied, revision, APPLY_TIMEOUT)
        if not ok:
            raise DatapathError("the kernel did not converge in time; see the agent's log")
        error = reconciler.error_for(bridge)
        if error:
            raise DatapathError(error)

    async def create(request: web.Request) -> web.Response:
        spec = NetworkSpec.from_json(await json_body(request))
        network, revision = await asyncio.to_thread(networks.create, spec)
        await settle(revision, network.bridge)
        return web.json_response(network_json(network), status=201)

    async def list_(_: web.Request) -> web.Response:
        nets = await asyncio.to_thread(networks.list)
        return web.json_response([network_json(n) for n in nets])

    async def inspect(request: web.Request) -> web.Response:
        network = await asyncio.to_thread(networks.get, request.match_info["name"])
        endpoints = await asyncio.to_thread(networks.endpoints, network.name)
        blocks = await asyncio.to_thread(networks.blocks, network.name)
        return web.json_response(network_json(network, endpoints, blocks))

    async def remove(request: web.Request) -> web.Response:
        network = await asyncio.to_thread(networks.get, request.match_info["name"])
        revision = await asyncio.to_thread(networks.remove, network.name)
        await settle(revision, network.bridge)
        return web.json_response({"removed": network.name, "id": network.id})

    async def prune(request: web.Request) -> web.Response:
        keep = prune_filter(request.query.getall("filter", []), time.time())
        removed, revision = await asyncio.to_thread(networks.prune, keep)
        await settle(revision, "")
        return web.json_response({"removed": removed})

    app.router.add_post("/api/networks", create)
    app.router.add_get("/api/networks", list_)
    app.router.add_post("/api/networks/prune", prune)
    app.router.add_get("/api/networks/{name}", inspect)
    app.router.add_delete("/api/networks/{name}", remove)
