"""/v1/connect/intentions through py-consul (exact-match model: upsert,
read, list, check, match, delete) and raw HTTP (the ID-based CRUD py-consul
leaves out), with Consul's shapes, precedence, status codes and ACL rules
(intention:read/write on the destination from its service rule). SQLite and etcd."""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import backends
import consul
import consul.exceptions
import pytest

from cove.agent.consul import ConsulServer
from cove.clock import SystemClock
from cove.store.base import Store

backend_store = backends.backend_store  # the fixture: SQLite, then etcd
ROOT = "7b1b5b8e-1111-4c1a-9d7e-000000000014"


@pytest.fixture(scope="module")
def server(backend_store: Store) -> Iterator[ConsulServer]:
    with ConsulServer(backend_store, SystemClock(), node_name="ixn-a") as srv:
        yield srv


@pytest.fixture
def c(server: ConsulServer) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=server.port)


def http(
    server: ConsulServer, method: str, path: str, body: Any = None, token: str = ""
) -> tuple[int, Any]:
    status, data, _ = http_full(server, method, path, body, token)
    return status, data


def http_full(
    server: ConsulServer, method: str, path: str, body: Any = None, token: str = ""
) -> tuple[int, Any, dict[str, str]]:
    """Status, decoded body and headers."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-Consul-Token"] = token
    req = urllib.request.Request(server.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            status = resp.status
            got = dict(resp.headers)
    except urllib.error.HTTPError as err:
        raw, status, got = err.read(), err.code, dict(err.headers)
    try:
        return status, json.loads(raw) if raw else None, got
    except ValueError:
        return status, raw.decode(), got


def _names() -> tuple[str, str]:
    tag = secrets.token_hex(3)
    return f"web-{tag}", f"db-{tag}"


def test_exact_upsert_read_check_delete(c: consul.Consul, server: ConsulServer) -> None:
    web, db = _names()
    assert c.connect.intentions.upsert(
        web, db, action="allow", description="front", meta={"a": "b"}
    )
    got = c.connect.intentions.read(web, db)
    assert (got["SourceName"], got["DestinationName"], got["Action"]) == (web, db, "allow")
    assert (got["Description"], got["Meta"], got["Precedence"]) == ("front", {"a": "b"}, 9)
    assert got["SourceType"] == "consul" and got["ID"] and got["CreateIndex"] > 0
    assert c.connect.intentions.check(web, db) is True
    # Upsert again: the same intention (same ID), now a deny.
    assert c.connect.intentions.upsert(web, db, action="deny")
    again = c.connect.intentions.read(web, db)
    assert again["ID"] == got["ID"] and again["Action"] == "deny"
    assert again["ModifyIndex"] > got["ModifyIndex"]
    assert c.connect.intentions.check(web, db) is False
    assert got["ID"] in [i["ID"] for i in c.connect.intentions.list()]
    assert c.connect.intentions.delete(web, db) is True
    status, body = http(
        server, "GET", f"/v1/connect/intentions/exact?source={web}&destination={db}"
    )
    assert status == 404 and "Intention not found" in body
    # No intention, no ACLs: allowed (Consul's default with ACLs off).
    assert c.connect.intentions.check(web, db) is True


def test_precedence_exact_beats_wildcard(c: consul.Consul, server: ConsulServer) -> None:
    web, db = _names()
    other = f"other-{secrets.token_hex(3)}"
    c.connect.intentions.upsert("*", db, action="deny")
    c.connect.intentions.upsert(web, db, action="allow")
    assert c.connect.intentions.check(web, db) is True  # 9 beats 8
    assert c.connect.intentions.check(other, db) is False  # only the wildcard matches
    matched = c.connect.intentions.match("destination", db)[db]
    assert [(i["SourceName"], i["Precedence"]) for i in matched] == [(web, 9), ("*", 8)]
    by_source = c.connect.intentions.match("source", web)[web]
    assert (web, db) in [(i["SourceName"], i["DestinationName"]) for i in by_source]
    listed = c.connect.intentions.list()
    precs = [i["Precedence"] for i in listed]
    assert precs == sorted(precs, reverse=True)
    c.connect.intentions.delete("*", db)
    c.connect.intentions.delete(web, db)


def test_id_crud_over_http(server: ConsulServer) -> None:
    web, db = _names()
    body = {"SourceName": web, "DestinationName": db, "Action": "allow"}
    status, made = http(server, "POST", "/v1/connect/intentions", body)
    assert status == 200 and set(made) == {"ID"}
    iid = made["ID"]
    status, got = http(server, "GET", f"/v1/connect/intentions/{iid}")
    assert status == 200 and got["ID"] == iid and got["Action"] == "allow"
    # The same pair again: Consul's "duplicate intention found", nothing stored.
    status, text = http(server, "POST", "/v1/connect/intentions", body)
    assert status == 500 and "duplicate intention found" in text
    status, _ = http(server, "PUT", f"/v1/connect/intentions/{iid}", {**body, "Action": "deny"})
    assert status == 200
    assert http(server, "GET", f"/v1/connect/intentions/{iid}")[1]["Action"] == "deny"
    assert http(server, "DELETE", f"/v1/connect/intentions/{iid}") == (200, True)
    assert http(server, "GET", f"/v1/connect/intentions/{iid}")[0] == 404
    assert http(server, "DELETE", f"/v1/connect/intentions/{iid}")[0] == 404


def test_bad_input_is_400_and_stores_nothing(server: ConsulServer) -> None:
    web, db = _names()
    for body, why in (
        ({"SourceName": web, "DestinationName": db, "Action": "maybe"}, "'allow' or 'deny'"),
        ({"DestinationName": db, "Action": "allow"}, "SourceName must be set"),
        ({"SourceName": web, "Action": "allow"}, "DestinationName must be set"),
        ({"SourceName": "web-*", "DestinationName": db, "Action": "allow"}, "partial wildcards"),
        ({"SourceName": web, "DestinationName": db, "Action": "allow", "SourceType": "x"}, "x"),
        (
            {"SourceName": web, "DestinationName": db, "Permissions": [{"Action": "allow"}]},
            "L7 intentions",
        ),
    ):
        status, text = http(server, "POST", "/v1/connect/intentions", body)
        assert status == 400 and why in text, (body, text)
    assert http(server, "GET", "/v1/connect/intentions/not-a-uuid")[0] == 400
    assert http(server, "GET", f"/v1/connect/intentions/match?by=sideways&name={db}")[0] == 400
    assert http(server, "GET", f"/v1/connect/intentions/check?source={web}")[0] == 400
    _, listed = http(server, "GET", "/v1/connect/intentions")
    assert db not in [i["DestinationName"] for i in listed]
    # The rest of Connect is still refused clearly.
    status, text = http(server, "GET", "/v1/connect/ca/roots")
    assert status == 400 and "Connect" in text


def test_intentions_need_service_rules_on_the_destination(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with backends.acl_server(tmp_path_factory.mktemp("acl"), "ixn-acl", ROOT) as srv:
        mgmt = consul.Consul(host="127.0.0.1", port=srv.port, token=ROOT)
        pol = mgmt.acl.policy.create(
            name="db-owner",
            rules={
                "service": {
                    "db": {"policy": "read", "intentions": "write"},
                    "web": {"policy": "write"},
                    "api": {"policy": "deny"},
                }
            },
        )
        tok = mgmt.acl.token.create(policies_id=[pol["ID"]])["SecretID"]
        c = consul.Consul(host="127.0.0.1", port=srv.port, token=tok)
        assert c.connect.intentions.upsert("web", "db", action="allow")
        # service:write alone grants intention:read only (Consul's default).
        with pytest.raises(consul.ACLPermissionDenied):
            c.connect.intentions.upsert("db", "web", action="allow")
        assert mgmt.connect.intentions.upsert("db", "web", action="allow")
        assert c.connect.intentions.read("db", "web")["Action"] == "allow"
        assert mgmt.connect.intentions.upsert("web", "api", action="allow")
        with pytest.raises(consul.ACLPermissionDenied):
            c.connect.intentions.upsert("web", "*", action="deny")
        assert mgmt.connect.intentions.upsert("web", "cache", action="deny")
        # Lists hide what the token cannot read.
        listed = sorted(i["DestinationName"] for i in c.connect.intentions.list())
        assert listed == ["db", "web"]  # not api (deny), not cache (no rule)
        status, _ = http(srv, "GET", "/v1/connect/intentions/exact?source=web&destination=db")
        assert status == 403  # anonymous
        # No matching intention: the ACL default policy (deny) decides.
        assert mgmt.connect.intentions.check("x", "y") is False
        assert c.connect.intentions.check("web", "db") is True


# -- blocking queries and ?filter ---------------------------------------------
# Consul: list, match, exact and by-ID reads block (?index=&wait=, answered
# with X-Consul-Index); ?filter (bexpr) applies to the list
# (website/content/api-docs/connect/intentions.mdx).


def _index(headers: dict[str, str]) -> int:
    return int(headers["X-Consul-Index"])


def _still_waiting(pending: Future[Any], seconds: float = 0.6) -> bool:
    time.sleep(seconds)
    return not pending.done()


def test_blocking_list_returns_when_an_intention_is_created(
    c: consul.Consul, server: ConsulServer
) -> None:
    web, db = _names()
    status, _, headers = http_full(server, "GET", "/v1/connect/intentions")
    assert status == 200
    index = _index(headers)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            http_full, server, "GET", f"/v1/connect/intentions?index={index}&wait=20s"
        )
        assert _still_waiting(pending), "answered before anything changed"
        # A write elsewhere (KV) does not wake a reader of intentions.
        c.kv.put(f"unrelated-{web}", "x")
        assert _still_waiting(pending), "woken by a KV write"
        started = time.monotonic()
        assert c.connect.intentions.upsert(web, db, action="allow")
        status, listed, headers = pending.result(timeout=10)
    assert time.monotonic() - started < 5
    assert status == 200 and _index(headers) > index
    made = [i for i in listed if (i["SourceName"], i["DestinationName"]) == (web, db)]
    assert len(made) == 1 and _index(headers) >= made[0]["ModifyIndex"]
    # A delete wakes it too, with a higher index than the create's.
    index = _index(headers)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            http_full, server, "GET", f"/v1/connect/intentions?index={index}&wait=20s"
        )
        assert _still_waiting(pending)
        assert c.connect.intentions.delete(web, db)
        status, listed, headers = pending.result(timeout=10)
    assert status == 200 and _index(headers) > index
    assert (web, db) not in [(i["SourceName"], i["DestinationName"]) for i in listed]


def test_blocking_wait_runs_out_with_the_same_index(server: ConsulServer) -> None:
    _, _, headers = http_full(server, "GET", "/v1/connect/intentions")
    index = _index(headers)
    started = time.monotonic()
    status, _, again = http_full(server, "GET", f"/v1/connect/intentions?index={index}&wait=1s")
    waited = time.monotonic() - started
    assert status == 200 and _index(again) == index
    assert 0.9 <= waited < 5, waited
    status, text, _ = http_full(server, "GET", "/v1/connect/intentions?index=1&wait=soon")
    assert status == 400 and "Invalid wait time" in text


def test_blocking_match_exact_and_by_id(c: consul.Consul, server: ConsulServer) -> None:
    web, db = _names()
    c.connect.intentions.upsert(web, db, action="allow")
    got_status, got, headers = http_full(
        server, "GET", f"/v1/connect/intentions/exact?source={web}&destination={db}"
    )
    assert got_status == 200
    index = _index(headers)
    paths = (
        f"/v1/connect/intentions/match?by=destination&name={db}&index={index}&wait=20s",
        f"/v1/connect/intentions/exact?source={web}&destination={db}&index={index}&wait=20s",
        f"/v1/connect/intentions/{got['ID']}?index={index}&wait=20s",
    )
    with ThreadPoolExecutor(len(paths)) as pool:
        pending = [pool.submit(http_full, server, "GET", p) for p in paths]
        time.sleep(0.6)
        assert not any(p.done() for p in pending), "answered before anything changed"
        c.connect.intentions.upsert(web, db, action="deny")
        results = [p.result(timeout=10) for p in pending]
    for status, _, hdrs in results:
        assert status == 200 and _index(hdrs) > index
    matched, exact, by_id = (body for _, body, _ in results)
    assert [i["Action"] for i in matched[db]] == ["deny"]
    assert exact["Action"] == "deny" and by_id["Action"] == "deny"
    c.connect.intentions.delete(web, db)


def test_filter_on_the_list(c: consul.Consul, server: ConsulServer) -> None:
    web, db = _names()
    api = f"api-{secrets.token_hex(3)}"
    c.connect.intentions.upsert(web, db, action="allow", meta={"team": "red"})
    c.connect.intentions.upsert(api, db, action="deny")
    try:
        only_web = c.connect.intentions.list(filter_expr=f'SourceName == "{web}"')
        assert [(i["SourceName"], i["DestinationName"]) for i in only_web] == [(web, db)]
        both = c.connect.intentions.list(
            filter_expr=f'DestinationName == "{db}" and Action == deny'
        )
        assert [i["SourceName"] for i in both] == [api]
        red = c.connect.intentions.list(
            filter_expr=f'Meta.team == red and DestinationName == "{db}"'
        )
        assert [i["SourceName"] for i in red] == [web]
        status, listed = http(
            server,
            "GET",
            "/v1/connect/intentions?filter="
            + urllib.parse.quote(f'SourceName matches "^{api}$" and Precedence == 9'),
        )
        assert status == 200 and [i["SourceName"] for i in listed] == [api]
    finally:
        c.connect.intentions.delete(web, db)
        c.connect.intentions.delete(api, db)


def test_bad_filter_is_400_naming_the_problem(c: consul.Consul, server: ConsulServer) -> None:
    for expr, why in (
        ('Sourcename == "web" and Nope == "x"', "Nope"),
        ("SourceName ==", "Failed to create boolean expression evaluator"),
        ('SourceName = "web"', "Failed to create boolean expression evaluator"),
    ):
        status, text = http(
            server, "GET", "/v1/connect/intentions?filter=" + urllib.parse.quote(expr)
        )
        assert status == 400 and why in text, (expr, text)
    with pytest.raises(consul.exceptions.BadRequest):
        c.connect.intentions.list(filter_expr="ServiceName == web")
    # A bad filter on a blocking query is refused at once, not after the wait.
    started = time.monotonic()
    status, _ = http(server, "GET", "/v1/connect/intentions?index=999999&wait=20s&filter=Nope==1")
    assert status == 400 and time.monotonic() - started < 5


def test_a_token_without_intentions_read_on_a_destination_does_not_see_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Consul's rules (agent/consul/intention_endpoint.go): the list hides
    (and flags) what the token cannot read on its destination, filtered or
    not; /match refuses a name it cannot read; by ID and /exact refuse with
    403; /check asks only service:read on the destination."""
    with backends.acl_server(tmp_path_factory.mktemp("acl"), "ixn-acl2", ROOT) as srv:
        mgmt = consul.Consul(host="127.0.0.1", port=srv.port, token=ROOT)
        pol = mgmt.acl.policy.create(
            name="web-reader",
            rules={
                "service": {
                    "db": {"policy": "read"},
                    "secret": {"policy": "read", "intentions": "deny"},
                }
            },
        )
        tok = mgmt.acl.token.create(policies_id=[pol["ID"]])["SecretID"]
        c = consul.Consul(host="127.0.0.1", port=srv.port, token=tok)
        for dest in ("db", "secret", "cache"):
            assert mgmt.connect.intentions.upsert("web", dest, action="allow")
        every = mgmt.connect.intentions.list(filter_expr='SourceName == "web"')
        assert sorted(i["DestinationName"] for i in every) == ["cache", "db", "secret"]
        mine = c.connect.intentions.list(filter_expr='SourceName == "web"')
        assert [i["DestinationName"] for i in mine] == ["db"]
        path = "/v1/connect/intentions?filter=" + urllib.parse.quote('SourceName == "web"')
        status, listed, headers = http_full(srv, "GET", path, token=tok)
        assert status == 200 and [i["DestinationName"] for i in listed] == ["db"]
        assert headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
        # Blocking with that token: a new hidden intention wakes the
        # query (the index moved) but is not shown.
        index = int(headers["X-Consul-Index"])
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                http_full, srv, "GET", f"{path}&index={index}&wait=20s", None, tok
            )
            assert _still_waiting(pending)
            mgmt.connect.intentions.upsert("web", "secret", action="deny")
            status, listed, headers = pending.result(timeout=10)
        assert status == 200 and int(headers["X-Consul-Index"]) > index
        assert [i["DestinationName"] for i in listed] == ["db"]
        # match: the names asked about must be readable, else 403.
        assert [i["SourceName"] for i in c.connect.intentions.match("destination", "db")["db"]]
        for name in ("secret", "cache"):
            with pytest.raises(consul.ACLPermissionDenied):
                c.connect.intentions.match("destination", name)
        # exact and by ID: 403 on an unreadable destination.
        secret_id = mgmt.connect.intentions.read("web", "secret")["ID"]
        assert http(srv, "GET", f"/v1/connect/intentions/{secret_id}", token=tok)[0] == 403
        status, _ = http(
            srv, "GET", "/v1/connect/intentions/exact?source=web&destination=cache", token=tok
        )
        assert status == 403
        # check: service:read on the destination is enough (intentions
        # "deny" does not matter), none is a 403.
        assert c.connect.intentions.check("web", "secret") is False
        assert c.connect.intentions.check("web", "db") is True
        with pytest.raises(consul.ACLPermissionDenied):
            c.connect.intentions.check("web", "cache")
