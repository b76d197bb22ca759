"""Prepared queries (/v1/query): create, read, update, delete, execute and
explain through py-consul (whose create always makes a name_prefix_match
template, as Consul accepts) and raw HTTP; OnlyPassing, tags, ?near,
?limit, templates with Regexp; errors as Consul's
(agent/consul/prepared_query_endpoint.go answers them 500, its RPC errors
carrying no status); ACLs. SQLite and etcd."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import backends
import consul
import pytest

from cove.agent.consul import ConsulServer
from cove.clock import SystemClock
from cove.store.base import Store

backend_store = backends.backend_store  # the fixture: SQLite, then etcd
ROOT = "7b1b5b8e-1111-4c1a-9d7e-000000000008"


@pytest.fixture(scope="module")
def server(backend_store: Store) -> Iterator[ConsulServer]:
    with ConsulServer(backend_store, SystemClock(), node_name="pq-a") as srv:
        yield srv


@pytest.fixture
def c(server: ConsulServer) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=server.port)


def http(
    server: ConsulServer, method: str, path: str, body: Any = None, token: str = ""
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"X-Consul-Token": token} if token else {}
    req = urllib.request.Request(server.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def register(c: consul.Consul, name: str) -> None:
    """Four instances of ``name``: passing (tags a, b), warning (a),
    critical (a), passing (a, old)."""
    for sid, tags, status in (
        ("ok", ["a", "b"], "pass"),
        ("warn", ["a"], "warn"),
        ("crit", ["a"], "fail"),
        ("old", ["a", "old"], "pass"),
    ):
        c.agent.service.register(
            name, service_id=f"{name}-{sid}", port=80, tags=tags, check=consul.Check.ttl("60s")
        )
        getattr(c.agent.check, f"ttl_{status}")(f"service:{name}-{sid}")


def ids(result: dict[str, Any]) -> list[str]:
    return sorted(e["Service"]["ID"].rsplit("-", 1)[1] for e in result["Nodes"])


def test_crud_and_execute(c: consul.Consul, server: ConsulServer) -> None:
    svc = f"pq-{secrets.token_hex(3)}"
    register(c, svc)
    created = c.query.create(svc, name=f"{svc}-q", tags=["a", "!old"])
    qid = created["ID"]
    [got] = c.query.get(qid)
    assert (got["Name"], got["Service"]["Service"], got["Service"]["Tags"]) == (
        f"{svc}-q",
        svc,
        ["a", "!old"],
    )
    assert qid in {q["ID"] for q in c.query.list()}
    # Critical dropped, warning kept; !old excludes the old one.
    result = c.query.execute(qid)
    assert (result["Service"], result["Datacenter"], result["Failovers"]) == (svc, "dc1", 0)
    assert ids(result) == ["ok", "warn"]
    assert ids(c.query.execute(f"{svc}-q")) == ["ok", "warn"]  # by name
    assert len(c.query.execute(qid, limit=1)["Nodes"]) == 1
    # Update to OnlyPassing: the warning goes too.
    status, _ = http(
        server,
        "PUT",
        f"/v1/query/{qid}",
        {"Name": f"{svc}-q", "Service": {"Service": svc, "OnlyPassing": True, "Tags": ["b"]}},
    )
    assert status == 200
    assert ids(c.query.execute(qid)) == ["ok"]
    assert c.query.explain(qid)["Query"]["Service"]["OnlyPassing"] is True
    assert c.query.delete(qid)
    assert http(server, "GET", f"/v1/query/{qid}")[0] == 404
    assert http(server, "GET", f"/v1/query/{qid}/execute")[0] == 404


def test_templates_render_the_name_asked(c: consul.Consul, server: ConsulServer) -> None:
    svc = f"tpl{secrets.token_hex(3)}"
    register(c, svc)
    body = {
        "Name": "geo-",
        "Template": {"Type": "name_prefix_match", "Regexp": "^geo-(.*?)(?:-only-(.*))?$"},
        "Service": {"Service": "${match(1)}", "Tags": ["${match(2)}"], "OnlyPassing": True},
    }
    status, text = http(server, "POST", "/v1/query", body)
    assert status == 200, text
    qid = json.loads(text)["ID"]
    explained = c.query.explain(f"geo-{svc}-only-b")["Query"]
    assert (explained["Service"]["Service"], explained["Service"]["Tags"]) == (svc, ["b"])
    assert ids(c.query.execute(f"geo-{svc}-only-b")) == ["ok"]
    assert ids(c.query.execute(f"geo-{svc}-only-old")) == ["old"]
    c.query.delete(qid)


def test_bad_queries_are_refused(c: consul.Consul, server: ConsulServer) -> None:
    name = f"dup-{secrets.token_hex(3)}"
    for body, why in (
        ({"Name": name, "Service": {}}, b"Must provide a Service name to query"),
        ({"Service": {"Service": "x"}, "Template": {"Type": "regex"}}, b"Bad Template.Type"),
        ({"Service": {"Service": "x", "Failover": {"NearestN": -1}}}, b"Bad NearestN"),
        ({"Service": {"Service": "x"}, "DNS": {"TTL": "soon"}}, b"Bad DNS TTL"),
        ({"Service": {"Service": "x"}, "Session": "nope"}, b"invalid session"),
        # RE2, as Consul's Go regexps: no backreferences.
        ({"Service": {"Service": "x"}, "Template": {"Regexp": "(a)\\1"}}, b"Bad Regexp"),
    ):
        status, text = http(server, "POST", "/v1/query", body)
        assert status == 500 and why in text, (body, text)
    assert http(server, "POST", "/v1/query", {"Name": name, "Service": {"Service": "x"}})[0] == 200
    status, text = http(server, "POST", "/v1/query", {"Name": name, "Service": {"Service": "y"}})
    assert status == 500 and b"aliases an existing query name" in text
    assert http(server, "GET", "/v1/query/no-such-query/execute")[0] == 404


def test_queries_need_query_rules(tmp_path_factory: pytest.TempPathFactory) -> None:
    with backends.acl_server(tmp_path_factory.mktemp("acl"), "pq-acl", ROOT) as srv:
        body = {"Name": "web", "Token": "s3cret", "Service": {"Service": "web"}}
        assert http(srv, "POST", "/v1/query", body)[0] == 403
        status, text = http(srv, "POST", "/v1/query", body, ROOT)
        assert status == 200
        qid = json.loads(text)["ID"]
        assert http(srv, "GET", f"/v1/query/{qid}")[0] == 403
        assert json.loads(http(srv, "GET", "/v1/query")[1]) == []
        assert http(srv, "DELETE", f"/v1/query/{qid}")[0] == 403
        [got] = json.loads(http(srv, "GET", f"/v1/query/{qid}", token=ROOT)[1])
        assert got["Token"] == "s3cret"  # management sees it
