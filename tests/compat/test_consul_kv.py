"""Consul KV, sessions, locks and transactions through py-consul and raw
HTTP, against cove's /v1 API on loopback over a SQLite store and an etcd one."""

from __future__ import annotations

import base64
import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import backends
import consul
import pytest
from backends import lagging_server

from cove.agent.consul import ConsulServer
from cove.clock import SystemClock
from cove.store.base import Store

backend_store = backends.backend_store  # the fixture: SQLite, then etcd


@pytest.fixture(scope="module")
def server(backend_store: Store) -> Iterator[ConsulServer]:
    with ConsulServer(backend_store, SystemClock(), node_name="kv-node") as srv:
        yield srv


@pytest.fixture
def c(server: ConsulServer) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=server.port)


@pytest.fixture
def ns() -> str:
    return f"t{secrets.token_hex(3)}/"


def http(
    server: ConsulServer, method: str, path: str, body: Any = None, raw: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(server.url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_put_get_delete(c: consul.Consul, ns: str, server: ConsulServer) -> None:
    assert c.kv.put(f"{ns}a", "1", flags=42)
    index, entry = c.kv.get(f"{ns}a")
    assert (entry["Value"], entry["Flags"]) == (b"1", 42)
    assert int(index) == entry["ModifyIndex"] >= entry["CreateIndex"]
    status, headers, body = http(server, "GET", f"/v1/kv/{ns}a?raw")
    assert (status, body) == (200, b"1")
    assert c.kv.delete(f"{ns}a")
    status, headers, _ = http(server, "GET", f"/v1/kv/{ns}a")
    # Missing: 404, and still an index to block on.
    assert status == 404 and int(headers["X-Consul-Index"]) >= 1
    assert c.kv.get(f"{ns}a") == (headers["X-Consul-Index"], None)


def test_empty_value_is_null(c: consul.Consul, ns: str, server: ConsulServer) -> None:
    assert c.kv.put(f"{ns}empty", "")
    status, _, body = http(server, "GET", f"/v1/kv/{ns}empty")
    assert json.loads(body)[0]["Value"] is None


def test_recurse_keys_separator(c: consul.Consul, ns: str) -> None:
    for key in ("a", "b/1", "b/2", "c/d/e"):
        c.kv.put(ns + key, key)
    _, entries = c.kv.get(ns, recurse=True)
    assert [e["Key"] for e in entries] == [ns + k for k in ("a", "b/1", "b/2", "c/d/e")]
    _, keys = c.kv.get(ns, keys=True, separator="/")
    assert keys == [ns + "a", ns + "b/", ns + "c/"]
    assert c.kv.delete(ns + "b/", recurse=True)
    _, keys = c.kv.get(ns, keys=True)
    assert keys == [ns + "a", ns + "c/d/e"]
    assert c.kv.get(ns + "nothing/", recurse=True)[1] is None


def test_cas(c: consul.Consul, ns: str) -> None:
    assert c.kv.put(f"{ns}k", "v0", cas=0)  # cas=0: only when absent
    assert not c.kv.put(f"{ns}k", "v1", cas=0)
    _, entry = c.kv.get(f"{ns}k")
    assert not c.kv.put(f"{ns}k", "v1", cas=entry["ModifyIndex"] - 1)
    assert c.kv.put(f"{ns}k", "v1", cas=entry["ModifyIndex"])
    assert c.kv.get(f"{ns}k")[1]["Value"] == b"v1"
    assert not c.kv.delete(f"{ns}k", cas=entry["ModifyIndex"])
    assert c.kv.get(f"{ns}k")[1] is not None


def test_bad_input(server: ConsulServer, ns: str) -> None:
    before = server.registry.store.revision
    status, _, body = http(server, "PUT", f"/v1/kv/{ns}big", raw=b"x" * (512 * 1024 + 1))
    assert status == 413 and b"too large" in body
    assert http(server, "PUT", f"/v1/kv/{ns}c?cas=abc", raw=b"v")[0] == 400
    assert http(server, "PUT", f"/v1/kv/{ns}c?flags=-1", raw=b"v")[0] == 400
    status, _, body = http(server, "PUT", f"/v1/kv/{ns}c?acquire=nope", raw=b"v")
    assert status == 500 and b"invalid session" in body
    assert server.registry.store.revision == before
    # Exactly 512 KiB is allowed.
    assert http(server, "PUT", f"/v1/kv/{ns}max", raw=b"y" * (512 * 1024))[0] == 200


def test_lock_acquire_release(c: consul.Consul, ns: str) -> None:
    s1 = c.session.create(name="one", lock_delay=0)
    s2 = c.session.create(name="two", lock_delay=0)
    key = f"{ns}leader"
    assert c.kv.put(key, "me", acquire=s1)
    assert not c.kv.put(key, "you", acquire=s2)
    _, entry = c.kv.get(key)
    assert (entry["Session"], entry["LockIndex"], entry["Value"]) == (s1, 1, b"me")
    assert not c.kv.put(key, "x", release=s2)
    assert c.kv.put(key, "bye", release=s1)
    assert "Session" not in c.kv.get(key)[1] or not c.kv.get(key)[1].get("Session")
    assert c.kv.put(key, "you", acquire=s2)
    assert c.kv.get(key)[1]["LockIndex"] == 2


def test_session_destroy_releases_or_deletes(c: consul.Consul, ns: str) -> None:
    keep = c.session.create(lock_delay=0)
    drop = c.session.create(lock_delay=0, behavior="delete")
    assert c.kv.put(f"{ns}held", "1", acquire=keep)
    assert c.kv.put(f"{ns}gone", "1", acquire=drop)
    assert c.session.destroy(keep) and c.session.destroy(drop)
    held = c.kv.get(f"{ns}held")[1]
    assert held is not None and not held.get("Session")
    assert c.kv.get(f"{ns}gone")[1] is None
    assert c.session.info(keep)[1] is None


def test_lock_delay_blocks_reacquire(c: consul.Consul, ns: str) -> None:
    s1 = c.session.create(lock_delay=15)
    assert c.kv.put(f"{ns}l", "1", acquire=s1)
    c.session.destroy(s1)
    s2 = c.session.create(lock_delay=0)
    # Consul: after an invalidation the key cannot be locked for lock-delay.
    assert not c.kv.put(f"{ns}l", "2", acquire=s2)


def test_session_info_list_node_renew(c: consul.Consul, server: ConsulServer) -> None:
    sid = c.session.create(name="ren", ttl=30, behavior="release")
    _, info = c.session.info(sid)
    assert (info["ID"], info["Name"], info["TTL"], info["Behavior"]) == (
        sid,
        "ren",
        "30s",
        "release",
    )
    assert info["NodeChecks"] == ["serfHealth"]
    assert sid in {s["ID"] for s in c.session.list()[1]}
    assert sid in {s["ID"] for s in c.session.node("kv-node")[1]}
    assert c.session.renew(sid)["ID"] == sid
    status, _, body = http(server, "PUT", "/v1/session/renew/00000000-0000-0000-0000-000000000000")
    assert status == 404 and b"not found" in body


def test_session_bad_input(server: ConsulServer) -> None:
    assert http(server, "PUT", "/v1/session/create", {"TTL": "1s"})[0] == 400
    assert http(server, "PUT", "/v1/session/create", {"Behavior": "explode"})[0] == 400
    assert http(server, "PUT", "/v1/session/create", raw=b"{oops")[0] == 400
    status, _, body = http(server, "PUT", "/v1/session/create", {"Node": "no-such-node"})
    assert status == 500 and b"Missing node registration" in body
    status, _, body = http(server, "PUT", "/v1/session/create", {"Checks": ["nope"]})
    assert status == 500 and b"nope" in body


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def test_txn_all_or_nothing(c: consul.Consul, server: ConsulServer, ns: str) -> None:
    result = c.txn.put(
        [
            {"KV": {"Verb": "set", "Key": f"{ns}x", "Value": b64("1")}},
            {"KV": {"Verb": "set", "Key": f"{ns}y", "Value": b64("2")}},
            {"KV": {"Verb": "get", "Key": f"{ns}x"}},
        ]
    )
    assert result["Errors"] is None
    assert [r["KV"]["Key"] for r in result["Results"]] == [f"{ns}x", f"{ns}y", f"{ns}x"]
    assert base64.b64decode(result["Results"][2]["KV"]["Value"]) == b"1"
    index = c.kv.get(f"{ns}x")[1]["ModifyIndex"]
    ops = [
        {"KV": {"Verb": "set", "Key": f"{ns}z", "Value": b64("3")}},
        {"KV": {"Verb": "cas", "Key": f"{ns}x", "Value": b64("9"), "Index": index + 100}},
        {"KV": {"Verb": "check-not-exists", "Key": f"{ns}y"}},
    ]
    status, _, body = http(server, "PUT", "/v1/txn", ops)
    assert status == 409
    errors = json.loads(body)["Errors"]
    assert [e["OpIndex"] for e in errors] == [1, 2]
    assert c.kv.get(f"{ns}z")[1] is None  # nothing partly written
    assert c.kv.get(f"{ns}x")[1]["Value"] == b"1"
    with pytest.raises(consul.ConsulException):
        c.txn.put(ops)


def test_txn_bad_input(server: ConsulServer, ns: str) -> None:
    many = [{"KV": {"Verb": "set", "Key": f"{ns}{i}", "Value": b64("v")}} for i in range(65)]
    assert http(server, "PUT", "/v1/txn", many)[0] == 413
    assert http(server, "PUT", "/v1/txn", raw=b"[{")[0] == 400
    assert http(server, "PUT", "/v1/txn", [{"KV": {"Verb": "explode", "Key": "k"}}])[0] == 400
    assert (
        http(server, "PUT", "/v1/txn", [{"KV": {"Verb": "set", "Key": "k", "Value": "@@"}}])[0]
        == 400
    )
    assert http(server, "PUT", "/v1/txn", [{"Node": {"Verb": "set"}}])[0] == 400


def test_the_index_of_a_key_just_deleted_does_not_go_back_while_the_watch_lags() -> None:
    # Under load the watch ran behind a delete the client had just made:
    # the 404's X-Consul-Index was the put's, and a moment later the
    # delete's (CI saw 3 then 4). A read now waits for the watch to catch
    # up with what it read.
    with lagging_server(0.3) as (srv, inner):
        client = consul.Consul(host="127.0.0.1", port=srv.port)
        assert client.kv.put("lag/a", "1")
        index, _ = client.kv.get("lag/a")
        assert client.kv.delete("lag/a")
        deleted = inner.revision
        status, headers, _ = http(srv, "GET", "/v1/kv/lag/a")
        assert status == 404
        assert int(headers["X-Consul-Index"]) == deleted > int(index)
        assert client.kv.get("lag/a") == (str(deleted), None)
