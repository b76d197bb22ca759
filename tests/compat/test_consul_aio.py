"""The new endpoint families through py-consul's asyncio client
(``consul.aio``), as a deploy hook or a scraper written with asyncio uses
them: agent health for load balancers, metrics, events with a blocking
list, config entries, prepared queries, txn catalog reads and a snapshot
round trip. SQLite and etcd.

The async client sends every JSON body as ``text/plain`` (aiohttp's type
for a str), which cove's guard refuses on /v1 writes (415, a browser's
cross-site form type); raw-byte bodies (KV values, event payloads,
snapshots) pass. So the writes with JSON bodies are made here with the
synchronous client."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import backends
import consul
import consul.aio
import pytest

from cove.agent.consul import ConsulServer
from cove.clock import SystemClock
from cove.store.base import Store

backend_store = backends.backend_store  # the fixture: SQLite, then etcd


@pytest.fixture(scope="module")
def server(backend_store: Store) -> Iterator[ConsulServer]:
    with ConsulServer(backend_store, SystemClock(), node_name="aio-a") as srv:
        yield srv


def test_new_endpoints_through_the_async_client(server: ConsulServer) -> None:
    name = f"aio-{secrets.token_hex(3)}"
    sync = consul.Consul(host="127.0.0.1", port=server.port)
    sync.agent.service.register(name, service_id=name, port=80, check=consul.Check.ttl("60s"))
    sync.agent.check.ttl_pass(f"service:{name}")
    sync.config.set("service-defaults", name, {"Protocol": "grpc"})
    qid = sync.query.create(name, name=f"{name}-q")["ID"]

    async def main() -> None:
        c = consul.aio.Consul(host="127.0.0.1", port=server.port)
        try:
            metrics = await c.agent.metrics()
            assert any(g["Name"] == "cove.agent.services" for g in metrics["Gauges"])
            assert "cove_agent_services" in await c.agent.metrics(format_prometheus=True)
            # Events: a blocking list wakes when an event is fired.
            index, _ = await c.event.list(name=name)
            waiter = asyncio.ensure_future(c.event.list(name=name, index=index, wait="10s"))
            await asyncio.sleep(0.2)
            assert not waiter.done()
            fired = await c.event.fire(name, "go")
            _, events = await asyncio.wait_for(waiter, 10)
            assert [(e["ID"], e["Payload"]) for e in events] == [(fired["ID"], b"go")]
            assert (await c.config.get("service-defaults", name))["Protocol"] == "grpc"
            result = await c.query.execute(qid)
            assert [e["Service"]["ID"] for e in result["Nodes"]] == [name]
            assert (await c.query.explain(f"{name}-q"))["Query"]["Service"]["Service"] == name
            config = await c.operator.raft_config()
            assert [s["Leader"] for s in config["Servers"]] == [True]
            # A snapshot round trip (binary bodies pass the guard).
            saved = await c.snapshot.save()
            await c.kv.put(f"{name}/k", b"after")
            assert await c.snapshot.restore(saved)
            assert (await c.kv.get(f"{name}/k"))[1] is None
        finally:
            await c.close()

    asyncio.run(main())
