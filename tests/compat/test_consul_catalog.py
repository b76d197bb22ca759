"""The Consul agent, catalog and health endpoints, driven by py-consul (the
real client) and raw HTTP, against cove's /v1 API served in-process on
loopback over a SQLite store and an etcd one."""

from __future__ import annotations

import json
import secrets
import time
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
    with ConsulServer(backend_store, SystemClock(), node_name="node-a") as srv:
        yield srv


@pytest.fixture
def c(server: ConsulServer) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=server.port)


def uniq(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def http(
    server: ConsulServer, method: str, path: str, body: Any = None, raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(server.url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def poll(fn: Any, deadline: float = 10.0) -> Any:
    end = time.monotonic() + deadline
    while True:
        value = fn()
        if value or time.monotonic() > end:
            return value
        time.sleep(0.05)


def test_register_shows_in_agent_catalog_and_health(c: consul.Consul) -> None:
    name = uniq("web")
    assert c.agent.service.register(
        name, service_id=f"{name}-1", address="10.0.0.5", port=8080, tags=["v1", "blue"],
        meta={"env": "prod"}, check=consul.Check.ttl("30s"),
    )  # fmt: skip
    svc = c.agent.services()[f"{name}-1"]
    assert (svc["Service"], svc["Port"], svc["Tags"], svc["Meta"]) == (
        name, 8080, ["v1", "blue"], {"env": "prod"},
    )  # fmt: skip
    _, services = c.catalog.services()
    assert services[name] == ["v1", "blue"]
    _, nodes = c.catalog.service(name)
    assert [(n["Node"], n["ServiceAddress"], n["ServicePort"]) for n in nodes] == [
        ("node-a", "10.0.0.5", 8080)
    ]
    _, entries = c.health.service(name)
    assert len(entries) == 1
    checks = {ch["CheckID"]: ch["Status"] for ch in entries[0]["Checks"]}
    # Consul: a check starts critical unless told otherwise; serfHealth is there.
    assert checks == {"serfHealth": "passing", f"service:{name}-1": "critical"}
    _, passing = c.health.service(name, passing=True)
    assert passing == []
    c.agent.check.ttl_pass(f"service:{name}-1", notes="all good")
    _, passing = c.health.service(name, passing=True)
    assert [e["Service"]["ID"] for e in passing] == [f"{name}-1"]
    assert passing[0]["Checks"][1]["Output"] == "all good"


def test_deregister_removes_instance_and_checks(c: consul.Consul, server: ConsulServer) -> None:
    name = uniq("api")
    c.agent.service.register(name, service_id=name, port=1, check=consul.Check.ttl("10s"))
    assert c.agent.service.deregister(name)
    assert name not in c.agent.services()
    assert c.health.service(name)[1] == []
    assert c.health.checks(name)[1] == []
    status, _, body = http(server, "PUT", f"/v1/agent/service/deregister/{name}")
    assert status == 404 and b"Unknown service ID" in body


def test_tags_are_anded_and_passing_filters(c: consul.Consul, server: ConsulServer) -> None:
    name = uniq("db")
    for i, tags in enumerate((["primary", "v2"], ["replica", "v2"], ["replica", "v1"])):
        c.agent.service.register(
            name, service_id=f"{name}-{i}", port=5432 + i, tags=tags,
            check={"TTL": "30s", "Status": "passing" if i != 1 else "warning"},
        )  # fmt: skip
    # py-consul sends one tag only; repeated ?tag= (AND) goes over raw HTTP.
    _, replicas = c.catalog.service(name, tag="replica")
    assert [n["ServiceID"] for n in replicas] == [f"{name}-1", f"{name}-2"]
    status, _, body = http(server, "GET", f"/v1/catalog/service/{name}?tag=replica&tag=v2")
    assert [n["ServiceID"] for n in json.loads(body)] == [f"{name}-1"]
    status, _, body = http(server, "GET", f"/v1/health/service/{name}?tag=v2&passing")
    assert status == 200
    assert [e["Service"]["ID"] for e in json.loads(body)] == [f"{name}-0"]
    _, warn = c.health.state("warning")
    assert f"{name}-1" in {ch["ServiceID"] for ch in warn}


def test_filter_expressions(server: ConsulServer, c: consul.Consul) -> None:
    name = uniq("flt")
    c.agent.service.register(name, service_id=f"{name}-a", port=1, tags=["x"], meta={"env": "a"})
    c.agent.service.register(name, service_id=f"{name}-b", port=2, tags=["y"], meta={"env": "b"})
    q = urllib.request.quote('Service.Meta.env == "b" or "x" not in Service.Tags')
    status, _, body = http(server, "GET", f"/v1/health/service/{name}?filter={q}")
    assert status == 200
    assert [e["Service"]["ID"] for e in json.loads(body)] == [f"{name}-b"]
    q = urllib.request.quote("ServiceTags contains x")
    status, _, body = http(server, "GET", f"/v1/catalog/service/{name}?filter={q}")
    assert [n["ServiceID"] for n in json.loads(body)] == [f"{name}-a"]
    status, _, body = http(
        server, "GET", f"/v1/agent/services?filter={q.replace('ServiceTags', 'Tags')}"
    )
    assert f"{name}-a" in json.loads(body) and f"{name}-b" not in json.loads(body)
    status, _, body = http(
        server, "GET", "/v1/agent/services?filter=" + urllib.request.quote("Tags ~~ x")
    )
    assert status == 400


def test_headers_index_and_other_datacenter(server: ConsulServer, c: consul.Consul) -> None:
    status, headers, _ = http(server, "GET", "/v1/catalog/services")
    assert status == 200
    assert int(headers["X-Consul-Index"]) >= 1
    assert headers["X-Consul-KnownLeader"] == "true"
    assert headers["X-Consul-LastContact"] == "0"
    status, _, body = http(server, "GET", "/v1/catalog/services?dc=elsewhere")
    assert status == 500 and b"No path to datacenter" in body
    # Tokens are accepted from every place Consul reads them (not enforced yet).
    for hdrs, q in (
        ({"X-Consul-Token": "t"}, ""),
        ({"Authorization": "Bearer t"}, ""),
        ({}, "?token=t"),
    ):
        assert http(server, "GET", "/v1/catalog/datacenters" + q, headers=hdrs)[0] == 200
    assert c.catalog.datacenters() == ["dc1"]


def test_agent_self_members_and_status(c: consul.Consul) -> None:
    me = c.agent.self()
    assert me["Config"]["NodeName"] == "node-a"
    assert me["Config"]["Datacenter"] == "dc1"
    major, minor = (int(x) for x in me["Config"]["Version"].split(".")[:2])
    assert (major, minor) >= (1, 11)
    assert me["Stats"]["consul"]["leader_addr"] == c.status.leader()
    assert c.status.peers() == [c.status.leader()]
    assert [m["Name"] for m in c.agent.members()] == ["node-a"]
    _, checks = c.health.node("node-a")
    assert {"serfHealth"} <= {ch["CheckID"] for ch in checks}


def test_catalog_register_and_deregister_external_node(c: consul.Consul) -> None:
    node = uniq("ext")
    assert c.catalog.register(
        node, "192.0.2.7", service={"Service": "legacy", "ID": "legacy1", "Port": 25},
        check={"CheckID": "legacy-up", "Name": "up", "Status": "passing", "ServiceID": "legacy1"},
    )  # fmt: skip
    _, info = c.catalog.node(node)
    assert info["Node"]["Address"] == "192.0.2.7"
    assert list(info["Services"]) == ["legacy1"]
    _, nodes = c.catalog.nodes()
    assert node in {n["Node"] for n in nodes}
    _, entries = c.health.service("legacy", passing=False)
    mine = [e for e in entries if e["Node"]["Node"] == node]
    # No agent renews this node's serfHealth: it reads critical, as in Consul
    # for a node whose agent is gone.
    assert {ch["CheckID"]: ch["Status"] for ch in mine[0]["Checks"]} == {
        "serfHealth": "critical", "legacy-up": "passing",
    }  # fmt: skip
    assert c.catalog.deregister(node)
    assert c.catalog.node(node)[1] is None


def test_maintenance_makes_service_critical(c: consul.Consul) -> None:
    name = uniq("mnt")
    c.agent.service.register(
        name, service_id=name, port=1, check={"TTL": "60s", "Status": "passing"}
    )
    assert len(c.health.service(name, passing=True)[1]) == 1
    c.agent.service.maintenance(name, "true", reason="upgrade")
    assert c.health.service(name, passing=True)[1] == []
    checks = c.agent.checks()
    assert checks[f"_service_maintenance:{name}"]["Notes"] == "upgrade"
    c.agent.service.maintenance(name, "false")
    assert len(c.health.service(name, passing=True)[1]) == 1


def test_replace_existing_checks(c: consul.Consul, server: ConsulServer) -> None:
    name = uniq("rep")
    body = {
        "Name": name,
        "Checks": [{"CheckID": "a", "TTL": "10s"}, {"CheckID": "b", "TTL": "10s"}],
    }
    assert http(server, "PUT", "/v1/agent/service/register", body)[0] == 200
    body = {"Name": name, "Checks": [{"CheckID": "a", "TTL": "10s"}]}
    assert http(server, "PUT", "/v1/agent/service/register", body)[0] == 200
    assert {ch["CheckID"] for ch in c.health.checks(name)[1]} == {"a", "b"}
    assert http(server, "PUT", "/v1/agent/service/register?replace-existing-checks", body)[0] == 200
    assert {ch["CheckID"] for ch in c.health.checks(name)[1]} == {"a"}


def test_request_keys_are_case_insensitive(server: ConsulServer, c: consul.Consul) -> None:
    name = uniq("case")
    check = {"ttl": "10s", "status": "passing", "deregister_critical_service_after": "1m"}
    body = {"name": name, "ID": f"{name}-1", "PORT": 99, "tags": ["t"], "check": check}
    assert http(server, "PUT", "/v1/agent/service/register", body)[0] == 200
    svc = c.agent.services()[f"{name}-1"]
    assert (svc["Port"], svc["Tags"]) == (99, ["t"])
    assert len(c.health.service(name, passing=True)[1]) == 1


def _check(**check: Any) -> dict[str, Any]:
    return {"Name": "x", "Check": check}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", b"Request decode failed"),
        ({"Name": "x", "Port": "eighty"}, b"Port"),
        ({"Port": 1}, b"Missing service name"),
        (_check(Interval="10s"), b"Invalid check"),
        (_check(DockerContainerID="f", Interval="1s"), b"docker"),
        (_check(HTTP="http://x", Interval="-5s"), b"Interval"),
        (_check(HTTP="http://x", Interval="9999h"), b"Interval"),
        (_check(TCP="h:1", Interval="soon"), b"duration"),
        (_check(Args=["true"], Interval="5s"), b"Scripts are disabled"),
        (["Name"], b"JSON object"),
    ],
)
def test_bad_registration_is_400_and_writes_nothing(
    server: ConsulServer, body: Any, needle: bytes
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    before = server.registry.store.revision
    status, _, answer = http(server, "PUT", "/v1/agent/service/register", raw=raw)
    assert status == 400, answer
    assert needle.lower() in answer.lower()
    assert server.registry.store.revision == before


def test_check_register_and_ttl_update(c: consul.Consul, server: ConsulServer) -> None:
    cid = uniq("chk")
    assert c.agent.check.register(cid, check=consul.Check.ttl("30s"), notes="n")
    assert c.agent.checks()[cid]["Status"] == "critical"
    c.agent.check.ttl_warn(cid, "slow")
    assert c.agent.checks()[cid]["Status"] == "warning"
    status, _, _ = http(
        server, "PUT", f"/v1/agent/check/update/{cid}", {"Status": "passing", "Output": "ok"}
    )
    assert status == 200
    assert (c.agent.checks()[cid]["Status"], c.agent.checks()[cid]["Output"]) == ("passing", "ok")
    assert c.agent.check.deregister(cid)
    assert cid not in c.agent.checks()
    assert http(server, "PUT", f"/v1/agent/check/pass/{cid}")[0] == 404


def test_filter_selector_typo_and_hostile_regex(server: ConsulServer, c: consul.Consul) -> None:
    name = uniq("fsel")
    c.agent.service.register(name, service_id=f"{name}-a", port=1)
    index, _ = c.health.service(name)
    # A blocking query with a bad filter is refused at once, not after its wait.
    q = urllib.request.quote("Service.Nmae == x")
    status, _, body = http(server, "GET", f"/v1/health/service/{name}?index={index}&filter={q}")
    assert status == 400
    assert b'Selector "Service.Nmae" is not valid' in body
    q = urllib.request.quote('Service matches "^(a+)+$"')
    status, _, body = http(server, "GET", f"/v1/agent/services?filter={q}")
    assert status == 200 and json.loads(body) == {}


def test_a_ttl_update_of_a_check_just_deregistered_is_refused_while_the_watch_lags() -> None:
    # Under load the check runner (fed by the watch) still ran a check the
    # client had just deregistered, and /v1/agent/check/pass answered 200
    # for a status that went nowhere. The store's answer now decides.
    with lagging_server(0.5) as (srv, _):
        client = consul.Consul(host="127.0.0.1", port=srv.port)
        cid = uniq("lagchk")
        assert client.agent.check.register(cid, check=consul.Check.ttl("30s"))
        time.sleep(1.0)  # the runner has it
        assert http(srv, "PUT", f"/v1/agent/check/pass/{cid}")[0] == 200
        assert client.agent.check.deregister(cid)
        status, _, body = http(srv, "PUT", f"/v1/agent/check/pass/{cid}")
        assert status == 404, body
        assert b"Unknown check ID" in body
        assert cid not in client.agent.checks()
