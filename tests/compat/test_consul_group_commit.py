"""Concurrent registrations through the Consul API share SQLite commits
(group commit) yet each is answered only once it is on disk: every
registration answered 200 is in the file, and one that fails does not take
its neighbours down."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from cove.agent.consul import ConsulServer
from cove.clock import SystemClock
from cove.store.sqlite import SqliteStore


async def _register_all(url: str, bodies: list[bytes]) -> list[int]:
    async with aiohttp.ClientSession() as session:

        async def one(body: bytes) -> int:
            async with session.put(f"{url}/v1/agent/service/register", data=body) as resp:
                await resp.read()
                return resp.status

        return await asyncio.gather(*(one(b) for b in bodies))


def test_concurrent_registrations_are_durable_when_answered(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    bodies = [
        json.dumps(
            {"Name": f"web{i % 3}", "ID": f"web-{i}", "Port": 80, "Check": {"TTL": "30s"}}
        ).encode()
        for i in range(40)
    ]
    bodies.insert(7, json.dumps({"Name": "bad", "Check": {"TTL": "-1s"}}).encode())
    store = SqliteStore(path, SystemClock())
    with ConsulServer(store, SystemClock(), node_name="n1", run_checks=False) as server:
        statuses = asyncio.run(_register_all(server.url, bodies))
        assert server.state is not None and server.state.commits is not None
    store.close()

    assert statuses[7] == 400
    assert statuses[:7] + statuses[8:] == [200] * 40
    again = SqliteStore(path, SystemClock())
    ids = {kv.key.rsplit("/", 1)[1] for kv in again.range("registry/agent/n1/svc/").kvs}
    assert ids == {f"web-{i}" for i in range(40)}
    again.close()
