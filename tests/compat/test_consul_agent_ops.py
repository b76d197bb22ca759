"""Operating an agent through /v1/agent/...: local service health as load
balancers probe it, version, host, metrics (Consul JSON and Prometheus),
reload, leave, force-leave, the log monitor, and Connect answered as not
supported. py-consul where it has the call, raw HTTP elsewhere; SQLite and
etcd; with ACLs in default-deny, each family refuses an anonymous caller."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.client import HTTPConnection
from typing import Any

import backends
import consul
import pytest

from cove.acl import AclService
from cove.agent.consul import ConsulServer
from cove.clock import SystemClock
from cove.store.base import Store

backend_store = backends.backend_store  # the fixture: SQLite, then etcd
ROOT = "7b1b5b8e-1111-4c1a-9d7e-000000000001"


@pytest.fixture(scope="module")
def server(backend_store: Store) -> Iterator[ConsulServer]:
    with ConsulServer(backend_store, SystemClock(), node_name="node-ops") as srv:
        yield srv


@pytest.fixture(scope="module")
def deny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsulServer]:
    from cove.store.sqlite import SqliteStore

    store = SqliteStore(str(tmp_path_factory.mktemp("acl") / "state.db"), SystemClock())
    acl = AclService(
        store,
        SystemClock(),
        enabled=True,
        default_policy="deny",
        initial_management=ROOT,
        node_name="node-deny",
    )
    acl.setup()
    try:
        with ConsulServer(store, SystemClock(), node_name="node-deny", acl=acl) as srv:
            yield srv
    finally:
        store.close()


@pytest.fixture
def c(server: ConsulServer) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=server.port)


def uniq(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def http(
    server: ConsulServer,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(server.url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


# -- /v1/agent/health/service ----------------------------------------------------


def test_local_service_health_codes_follow_the_worst_check(
    c: consul.Consul, server: ConsulServer
) -> None:
    name = uniq("lb")
    for i in (1, 2):
        c.agent.service.register(
            name, service_id=f"{name}-{i}", port=80, check=consul.Check.ttl("60s")
        )
        c.agent.check.ttl_pass(f"service:{name}-{i}")
    status, _, body = http(server, "GET", f"/v1/agent/health/service/name/{name}")
    infos = json.loads(body)
    assert status == 200 and [i["AggregatedStatus"] for i in infos] == ["passing", "passing"]
    assert {i["Service"]["ID"] for i in infos} == {f"{name}-1", f"{name}-2"}
    assert infos[0]["Checks"][0]["Status"] == "passing"
    c.agent.check.ttl_warn(f"service:{name}-2")
    assert http(server, "GET", f"/v1/agent/health/service/name/{name}?format=text")[::2] == (
        429,
        b"warning",
    )
    status, _, body = http(server, "GET", f"/v1/agent/health/service/id/{name}-1")
    assert status == 200 and json.loads(body)["AggregatedStatus"] == "passing"
    c.agent.check.ttl_fail(f"service:{name}-1")
    assert http(server, "GET", f"/v1/agent/health/service/id/{name}-1?format=text")[::2] == (
        503,
        b"critical",
    )
    c.agent.service.maintenance(f"{name}-2", True, "deploy")
    status, _, body = http(server, "GET", f"/v1/agent/health/service/id/{name}-2")
    assert status == 503 and json.loads(body)["AggregatedStatus"] == "maintenance"
    # Unknown: 404 naming it; a bad format: 400.
    status, _, body = http(server, "GET", "/v1/agent/health/service/id/nope")
    assert (status, body) == (404, b"ServiceId nope not found")
    status, _, body = http(server, "GET", "/v1/agent/health/service/name/nope?format=text")
    assert (status, body) == (404, b"ServiceName nope Not Found")
    assert http(server, "GET", f"/v1/agent/health/service/id/{name}-1?format=xml")[0] == 400


# -- version, host, metrics ----------------------------------------------------------


def test_version_and_host(server: ConsulServer) -> None:
    status, _, body = http(server, "GET", "/v1/agent/version")
    v = json.loads(body)
    assert (
        status == 200
        and v["ReleaseVersion"]
        == json.loads(http(server, "GET", "/v1/agent/self")[2])["Config"]["Version"]
    )
    status, _, body = http(server, "GET", "/v1/agent/host")
    h = json.loads(body)
    assert status == 200 and h["Memory"]["total"] > 0 and h["Host"]["os"] == "linux"
    assert len(h["CPU"]) >= 1 and h["Disk"]["total"] > 0 and h["CollectionTime"] > 0


def test_metrics_json_and_prometheus(c: consul.Consul) -> None:
    name = uniq("m")
    c.agent.service.register(name, port=1, check=consul.Check.ttl("60s"))
    m = c.agent.metrics()
    assert set(m) == {"Timestamp", "Gauges", "Points", "Counters", "Samples"}
    gauges = {(g["Name"], tuple(sorted(g["Labels"].items()))): g["Value"] for g in m["Gauges"]}
    assert gauges[("cove.agent.services", ())] >= 1
    assert gauges[("cove.agent.checks", (("status", "critical"),))] >= 1
    text = c.agent.metrics(format_prometheus=True)
    assert "# TYPE cove_agent_services gauge" in text
    assert 'cove_agent_checks{status="critical"}' in text


# -- reload, leave, force-leave ---------------------------------------------------------


def test_reload_and_leave_are_refused_where_the_server_cannot(server: ConsulServer) -> None:
    # This standalone server has neither hook (the agent wires both); it
    # says so instead of answering 200 for nothing.
    status, _, body = http(server, "PUT", "/v1/agent/reload")
    assert status == 500 and b"no reloadable configuration" in body
    status, _, body = http(server, "PUT", "/v1/agent/leave")
    assert status == 500 and b"cannot be stopped" in body


def test_force_leave_removes_a_dead_node_only(c: consul.Consul, server: ConsulServer) -> None:
    dead = uniq("dead")
    c.catalog.register(dead, "10.9.9.9", service={"Service": "gone", "Port": 1})
    assert c.agent.force_leave(dead)
    assert c.catalog.node(dead)[1] is None
    # A live node (this one) stays; an unknown one is an error, as Consul.
    assert c.agent.force_leave("node-ops")
    assert c.catalog.node("node-ops")[1] is not None
    status, _, body = http(server, "PUT", "/v1/agent/force-leave/no-such-node")
    assert status == 500 and b"No node found with name 'no-such-node'" in body


# -- monitor -------------------------------------------------------------------------


def _monitor_lines(server: ConsulServer, query: str, emit: Any, want: int) -> list[str]:
    conn = HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", f"/v1/agent/monitor{query}")
    resp = conn.getresponse()
    assert resp.status == 200
    lines: list[str] = []
    emitter = threading.Timer(0.3, emit)
    emitter.start()
    try:
        while len(lines) < want:
            line = resp.readline().decode()
            if not line:
                break
            if "monitor-test" in line:
                lines.append(line.strip())
    finally:
        emitter.cancel()
        conn.close()
    return lines


def test_monitor_streams_log_lines_at_the_level_asked(server: ConsulServer) -> None:
    log = logging.getLogger("cove.monitor-test")
    tag = uniq("mark")

    def emit() -> None:
        log.debug("debug %s", tag)
        log.warning("warn %s", tag)

    lines = _monitor_lines(server, "?loglevel=warn", emit, 1)
    assert len(lines) == 1 and "[WARN]" in lines[0] and f"warn {tag}" in lines[0]
    lines = _monitor_lines(server, "?loglevel=debug&logjson=true", emit, 2)
    parsed = [json.loads(line) for line in lines]
    assert [p["@level"] for p in parsed] == ["debug", "warn"]
    assert parsed[0]["@message"] == f"debug {tag}"
    status, _, body = http(server, "GET", "/v1/agent/monitor?loglevel=loud")
    assert status == 400 and b"loud" in body
    time.sleep(0.1)
    # The monitors are gone: no handler of theirs is left on the logger.
    assert not [h for h in logging.getLogger("cove").handlers if "Queue" in type(h).__name__]


# -- Connect -------------------------------------------------------------------------


def test_connect_endpoints_say_not_supported(c: consul.Consul, server: ConsulServer) -> None:
    for method, path in (
        ("GET", "/v1/agent/connect/ca/roots"),
        ("GET", "/v1/agent/connect/ca/leaf/web"),
        ("POST", "/v1/agent/connect/authorize"),
        ("GET", "/v1/connect/intentions"),
        ("GET", "/v1/connect/ca/roots"),
    ):
        status, _, body = http(server, method, path, {} if method == "POST" else None)
        assert status == 400 and b"cove does not implement Consul Connect" in body, path
    with pytest.raises(consul.exceptions.BadRequest):
        c.agent.connect.ca.roots()


# -- ACLs ------------------------------------------------------------------------------


def test_agent_operations_need_their_acl_rules(deny_server: ConsulServer) -> None:
    anon = consul.Consul(host="127.0.0.1", port=deny_server.port)
    root = consul.Consul(host="127.0.0.1", port=deny_server.port, token=ROOT)
    root.agent.service.register("web", service_id="web1", port=80)
    for method, path in (
        ("GET", "/v1/agent/metrics"),  # agent:read
        ("GET", "/v1/agent/monitor"),  # agent:read
        ("GET", "/v1/agent/host"),  # operator:read
        ("PUT", "/v1/agent/reload"),  # agent:write
        ("PUT", "/v1/agent/leave"),  # agent:write
        ("PUT", "/v1/agent/force-leave/node-deny"),  # operator:write
        ("GET", "/v1/agent/health/service/id/web1"),  # service:read
        ("GET", "/v1/agent/health/service/name/web"),  # service:read
    ):
        status, _, body = http(deny_server, method, path)
        assert status == 403 and b"Permission denied" in body, (path, body)
    with pytest.raises(consul.ACLPermissionDenied):
        anon.agent.metrics()
    assert root.agent.metrics()["Gauges"]
    status, _, _ = http(
        deny_server, "GET", "/v1/agent/health/service/id/web1", headers={"X-Consul-Token": ROOT}
    )
    assert status == 200  # no checks: passing
