"""Blocking queries (?index, ?wait) as Consul clients use them: they return
when what they cover changes, and, better than Consul, not when something
unrelated does."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import backends
import consul
import pytest

from cove.agent.consul import ConsulServer
from cove.clock import SystemClock
from cove.store.base import Store

backend_store = backends.backend_store  # the fixture: SQLite, then etcd


@pytest.fixture(scope="module")
def server(backend_store: Store) -> Iterator[ConsulServer]:
    with ConsulServer(backend_store, SystemClock(), node_name="blk") as srv:
        yield srv


@pytest.fixture
def c(server: ConsulServer) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=server.port)


def uniq(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


class Background:
    """Run a blocking call on a thread; ``result()`` waits for it."""

    def __init__(self, fn: Any) -> None:
        self.value: Any = None
        self.done_at = 0.0
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Any) -> None:
        self.value = fn()
        self.done_at = time.monotonic()

    def result(self, timeout: float = 30.0) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the blocking query never returned"
        return self.value


def wakeups(server: ConsulServer) -> int:
    assert server.state is not None and server.state.interests is not None
    return server.state.interests.wakeups


def test_health_query_wakes_on_its_service_only(c: consul.Consul, server: ConsulServer) -> None:
    mine, other = uniq("mine"), uniq("other")
    c.agent.service.register(mine, service_id=mine, port=1, check=consul.Check.ttl("60s"))
    c.agent.service.register(other, service_id=other, port=2, check=consul.Check.ttl("60s"))
    index, _ = c.health.service(mine)
    woken_before = wakeups(server)
    start = time.monotonic()
    waiter = Background(lambda: c.health.service(mine, index=index, wait="2s"))
    time.sleep(0.2)
    # Unrelated writes: another service's status, a new service, KV.
    c.agent.check.ttl_pass(f"service:{other}")
    c.agent.service.register(uniq("third"), port=3)
    c.kv.put(uniq("key"), "v")
    new_index, data = waiter.result()
    assert new_index == index, "an unrelated write woke the query"
    assert waiter.done_at - start >= 1.9
    assert wakeups(server) == woken_before

    start = time.monotonic()
    waiter = Background(lambda: c.health.service(mine, index=index, wait="30s", passing=True))
    time.sleep(0.2)
    c.agent.check.ttl_pass(f"service:{mine}")
    new_index, data = waiter.result()
    assert int(new_index) > int(index)
    assert [e["Service"]["ID"] for e in data] == [mine]
    assert waiter.done_at - start < 20


def test_kv_delete_and_create_wake(c: consul.Consul) -> None:
    key = uniq("blk")
    c.kv.put(key, "1")
    index, _ = c.kv.get(key)
    waiter = Background(lambda: c.kv.get(key, index=index, wait="30s"))
    time.sleep(0.2)
    c.kv.delete(key)
    new_index, entry = waiter.result()
    # A delete leaves no ModifyIndex behind; the index still moves forward.
    assert entry is None and int(new_index) > int(index)

    waiter = Background(lambda: c.kv.get(key, index=new_index, wait="30s"))
    time.sleep(0.2)
    c.kv.put(key, "2")
    last_index, entry = waiter.result()
    assert entry["Value"] == b"2" and int(last_index) > int(new_index)


def test_recurse_wakes_on_prefix_only(c: consul.Consul, server: ConsulServer) -> None:
    prefix = uniq("tree") + "/"
    c.kv.put(prefix + "a", "1")
    index, _ = c.kv.get(prefix, recurse=True)
    waiter = Background(lambda: c.kv.get(prefix, recurse=True, index=index, wait="1s"))
    time.sleep(0.2)
    c.kv.put(prefix[:-1] + "-sibling", "x")  # shares characters, not the prefix
    assert waiter.result()[0] == index
    waiter = Background(lambda: c.kv.get(prefix, recurse=True, index=index, wait="30s"))
    time.sleep(0.2)
    c.kv.put(prefix + "b", "2")
    new_index, entries = waiter.result()
    assert [e["Key"] for e in entries] == [prefix + "a", prefix + "b"]
    assert int(new_index) > int(index)


def test_catalog_services_wakes_on_new_service(c: consul.Consul) -> None:
    index, _ = c.catalog.services()
    name = uniq("new")
    waiter = Background(lambda: c.catalog.services(index=index, wait="30s"))
    time.sleep(0.2)
    c.agent.service.register(name, port=1)
    new_index, services = waiter.result()
    assert name in services and int(new_index) > int(index)


def test_bad_wait_and_index(server: ConsulServer) -> None:
    import urllib.error
    import urllib.request

    for q in ("index=abc", "index=1&wait=forever", "index=-4"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{server.url}/v1/catalog/services?{q}", timeout=10)
        assert err.value.code == 400


def test_future_index_answers_at_once(c: consul.Consul) -> None:
    start = time.monotonic()
    index, _ = c.catalog.services(index=10**12, wait="20s")
    assert time.monotonic() - start < 10
    assert int(index) < 10**12


def test_agent_service_blocks_on_its_content_hash(c: consul.Consul, server: ConsulServer) -> None:
    """Consul's /v1/agent/service/:id blocks on ``?hash=`` (hash-based only,
    website/content/api-docs/agent/service.mdx) and answers the hash in
    ``X-Consul-ContentHash``; sidecar proxies and consul-template poll it so."""
    import json
    import urllib.request

    sid = uniq("hashed")
    c.agent.service.register("hashed", service_id=sid, port=80, tags=["v1"])
    url = f"{server.url}/v1/agent/service/{sid}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        first = json.loads(resp.read())
        digest = resp.headers["X-Consul-ContentHash"]
    assert digest == first["ContentHash"]

    def wait_for_change() -> tuple[str, dict[str, Any]]:
        with urllib.request.urlopen(f"{url}?hash={digest}&wait=20s", timeout=30) as resp:
            return resp.headers["X-Consul-ContentHash"], json.loads(resp.read())

    pending = Background(wait_for_change)
    time.sleep(0.6)
    assert pending.done_at == 0.0, "answered before the service changed"
    changed_at = time.monotonic()
    c.agent.service.register("hashed", service_id=sid, port=80, tags=["v2"])
    new_digest, body = pending.result()
    assert pending.done_at - changed_at < 5
    assert new_digest != digest and body["Tags"] == ["v2"] and body["ContentHash"] == new_digest
    # A hash the service does not have: the answer comes at once.
    started = time.monotonic()
    with urllib.request.urlopen(f"{url}?hash=nothex&wait=20s", timeout=30) as resp:
        assert resp.status == 200
    assert time.monotonic() - started < 5
    c.agent.service.deregister(sid)
