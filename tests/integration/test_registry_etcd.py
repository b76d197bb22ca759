"""The registry on the etcd store: two agents (two nodes) sharing one etcd,
as in a cluster. Catalog, health, KV with CAS and locks, and a blocking
query that wakes on the other agent's write all go through etcd."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import consul
import pytest

from cove.agent.consul import ConsulServer
from cove.clock import SystemClock
from cove.store.etcd import EtcdStore

pytestmark = pytest.mark.etcd

etcd_fixture = pytest.importorskip("etcd_fixture")


@pytest.fixture(scope="module")
def etcd_url() -> Iterator[str]:
    with etcd_fixture.run_etcd() as url:
        yield url


@pytest.fixture(scope="module")
def agents(etcd_url: str) -> Iterator[tuple[consul.Consul, consul.Consul]]:
    stores = [EtcdStore([etcd_url], SystemClock()) for _ in range(2)]
    servers = [
        ConsulServer(store, SystemClock(), node_name=f"host{i}") for i, store in enumerate(stores)
    ]
    try:
        for s in servers:
            s.start()
        yield tuple(consul.Consul(port=s.port) for s in servers)  # type: ignore[misc]
    finally:
        for s in servers:
            s.stop()
        for store in stores:
            store.close()


def test_two_nodes_share_catalog_and_health(agents: tuple[consul.Consul, consul.Consul]) -> None:
    a, b = agents
    a.agent.service.register("api", service_id="api-a", port=1, check={"TTL": "60s"})
    b.agent.service.register("api", service_id="api-b", port=2, check={"TTL": "60s"})
    a.agent.check.ttl_pass("service:api-a")
    _, entries = b.health.service("api")
    assert sorted((e["Node"]["Node"], e["Service"]["ID"]) for e in entries) == [
        ("host0", "api-a"),
        ("host1", "api-b"),
    ]
    _, passing = b.health.service("api", passing=True)
    assert [e["Service"]["ID"] for e in passing] == ["api-a"]
    assert {m["Name"] for m in a.agent.members()} == {"host0", "host1"}
    # Each agent owns its own services: b cannot deregister a's instance.
    assert not b.agent.service.deregister("api-a")  # 404: not b's
    assert "api-a" in a.agent.services()


def test_kv_cas_and_locks_across_nodes(agents: tuple[consul.Consul, consul.Consul]) -> None:
    a, b = agents
    assert a.kv.put("shared/x", "1", cas=0)
    assert not b.kv.put("shared/x", "2", cas=0)
    index = b.kv.get("shared/x")[1]["ModifyIndex"]
    assert b.kv.put("shared/x", "2", cas=index)
    assert a.kv.get("shared/x")[1]["Value"] == b"2"
    sa, sb = a.session.create(lock_delay=0), b.session.create(lock_delay=0)
    assert a.kv.put("shared/lock", "a", acquire=sa)
    assert not b.kv.put("shared/lock", "b", acquire=sb)
    a.session.destroy(sa)
    assert b.kv.put("shared/lock", "b", acquire=sb)


def test_blocking_query_wakes_on_other_nodes_write(
    agents: tuple[consul.Consul, consul.Consul],
) -> None:
    a, b = agents
    index, _ = a.kv.get("wake/me")
    result: list[object] = []

    def wait_like_a_client() -> None:
        # As consul-template and Go's consul/api do: a blocking query may
        # return early, so re-issue it with the new index until the value
        # is there; the write on the other node must end the wait quickly.
        nonlocal index
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            index, data = a.kv.get("wake/me", index=index, wait="30s")
            if data is not None:
                result.append(data)
                return

    waiter = threading.Thread(target=wait_like_a_client, daemon=True)
    waiter.start()
    b.kv.put("wake/me", "now")
    waiter.join(30)
    assert result and result[0]["Value"] == b"now"  # type: ignore[index]
