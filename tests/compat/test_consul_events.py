"""User events: PUT /v1/event/fire/:name and GET /v1/event/list with
blocking queries on Consul's hashed index, through py-consul, on SQLite and
etcd, across two agents that share the store (an event fired at one is
received by the other when its filters match it)."""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import backends
import consul
import pytest

from cove.agent.consul import ConsulServer
from cove.clock import SystemClock
from cove.registry.events import uuid_index
from cove.store.base import Store

backend_store = backends.backend_store  # the fixture: SQLite, then etcd
ROOT = "7b1b5b8e-1111-4c1a-9d7e-000000000002"


@pytest.fixture(scope="module")
def pair(backend_store: Store) -> Iterator[tuple[ConsulServer, ConsulServer]]:
    with (
        ConsulServer(backend_store, SystemClock(), node_name="ev-a") as a,
        ConsulServer(backend_store, SystemClock(), node_name="ev-b") as b,
    ):
        yield a, b


def client(server: ConsulServer, token: str | None = None) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=server.port, token=token)


def uniq(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def http(
    server: ConsulServer, method: str, path: str, raw: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(server.url + path, data=raw, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_fire_answers_the_event_and_every_agent_lists_it(
    pair: tuple[ConsulServer, ConsulServer],
) -> None:
    a, b = (client(s) for s in pair)
    name = uniq("deploy")
    fired = a.event.fire(name, "v1.2.3")
    assert (fired["Name"], fired["Version"], fired["LTime"]) == (name, 1, 0)
    assert len(fired["ID"]) == 36
    for agent in (a, b):
        index, events = agent.event.list(name=name)
        assert [(e["ID"], e["Payload"]) for e in events] == [(fired["ID"], b"v1.2.3")]
        assert events[0]["LTime"] > 0
        assert int(index) == uuid_index(fired["ID"])
    # ?name keeps only that name; no payload is null.
    other = uniq("other")
    a.event.fire(other)
    _, events = b.event.list(name=other)
    assert [e["Payload"] for e in events] == [None]
    _, events = b.event.list(name=name)
    assert len(events) == 1


def test_filters_pick_the_agents_that_receive(
    pair: tuple[ConsulServer, ConsulServer],
) -> None:
    a, b = (client(s) for s in pair)
    svc = uniq("api")
    b.agent.service.register(svc, port=80, tags=["canary"])
    name = uniq("restart")
    a.event.fire(name, "x", node="^ev-b$")
    a.event.fire(name, "y", service=svc)
    a.event.fire(name, "z", service=svc, tag="^stable$")
    a.event.fire(name, "w", service=svc, tag="can")
    assert [e["Payload"] for e in b.event.list(name=name)[1]] == [b"x", b"y", b"w"]
    assert a.event.list(name=name)[1] == []
    # ?node / ?service / ?tag keep the events fired with those filters.
    assert [e["Payload"] for e in b.event.list(name=name, node="^ev-b$")[1]] == [b"x"]
    assert [e["Payload"] for e in b.event.list(name=name, service=svc, tag="can")[1]] == [b"w"]


def test_bad_events_are_refused_and_nothing_is_stored(
    pair: tuple[ConsulServer, ConsulServer],
) -> None:
    a = pair[0]
    name = uniq("bad")
    # Consul answers these with 500 (agent/user_event.go, validateUserEvent).
    status, _, body = http(a, "PUT", f"/v1/event/fire/{name}?tag=x")
    assert (status, body) == (500, b"Cannot provide tag filter without service filter")
    status, _, body = http(a, "PUT", f"/v1/event/fire/{name}?node=(")
    assert status == 500 and b"Failed to parse node filter" in body
    # RE2, as Consul's Go regexps: a backreference is refused.
    status, _, body = http(a, "PUT", f"/v1/event/fire/{name}?service=(a)%5C1")
    assert status == 500 and b"Failed to parse service filter" in body
    status, _, body = http(a, "PUT", f"/v1/event/fire/{name}", raw=b"x" * 600)
    assert status == 500 and b"exceeds configured limit of 512 bytes" in body
    assert client(a).event.list(name=name)[1] == []


def test_list_blocks_until_the_hashed_index_changes(
    pair: tuple[ConsulServer, ConsulServer],
) -> None:
    a, b = (client(s) for s in pair)
    name = uniq("block")
    first = a.event.fire(name, "1")
    index, _ = b.event.list(name=name)
    # Nothing new: the wait runs out and the index is the same.
    start = time.monotonic()
    again, events = b.event.list(name=name, index=index, wait="1s")
    assert again == index and len(events) == 1 and time.monotonic() - start >= 0.9
    # Another name's event wakes the store but not this list's index.
    result: dict[str, Any] = {}

    def wait() -> None:
        start = time.monotonic()
        result["answer"] = b.event.list(name=name, index=index, wait="10s")
        result["took"] = time.monotonic() - start

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)
    a.event.fire(uniq("unrelated"))
    time.sleep(0.3)
    assert waiter.is_alive()
    second = a.event.fire(name, "2")
    waiter.join(10)
    new_index, events = result["answer"]
    assert [e["ID"] for e in events] == [first["ID"], second["ID"]]
    assert int(new_index) == uuid_index(second["ID"]) and result["took"] < 5


def test_only_the_last_256_are_kept(pair: tuple[ConsulServer, ConsulServer]) -> None:
    a = client(pair[0])
    name = uniq("flood")
    ids = [a.event.fire(name, str(i))["ID"] for i in range(260)]
    events = a.event.list(name=name)[1]
    assert [e["ID"] for e in events] == ids[-256:]


def test_events_need_event_rules(tmp_path_factory: pytest.TempPathFactory) -> None:
    with backends.acl_server(tmp_path_factory.mktemp("acl"), "ev-acl", ROOT) as srv:
        root, anon = client(srv, ROOT), client(srv)
        with pytest.raises(consul.ACLPermissionDenied):
            anon.event.fire("deploy", "x")
        assert root.event.fire("deploy", "x")["Name"] == "deploy"
        assert anon.event.list()[1] == []
        status, headers, body = http(srv, "GET", "/v1/event/list")
        assert status == 200 and json.loads(body) == []
        assert headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
        rules = 'event "deploy" { policy = "read" }'
        req = urllib.request.Request(
            f"{srv.url}/v1/acl/policy",
            data=json.dumps({"Name": "ev-read", "Rules": rules}).encode(),
            method="PUT",
            headers={"X-Consul-Token": ROOT},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            policy = json.loads(resp.read())
        token = root.acl.token.create(policies_id=[policy["ID"]])["SecretID"]
        # py-consul's event.list sends no token: raw HTTP with one.
        req = urllib.request.Request(f"{srv.url}/v1/event/list", headers={"X-Consul-Token": token})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert [e["Name"] for e in json.loads(resp.read())] == ["deploy"]
        with pytest.raises(consul.ACLPermissionDenied):
            client(srv, token).event.fire("deploy")
