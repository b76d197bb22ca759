"""Answers that used to be wrong while looking like success (issue 14): the
agent in its own catalog, ?filter on /v1/catalog/services, a foreign
Datacenter in a register body, ?peer, Connect fields, a check on an unknown
service, ?release with a vanished session, the shape of /v1/agent/services,
/v1/agent/self's Member, TTL expiry on time and ``GET /``. Driven by py-consul
(the real client) and raw HTTP where it has no call, on SQLite and etcd."""

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
    server: ConsulServer, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(server.url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_the_agent_is_a_consul_service_on_its_node(c: consul.Consul) -> None:
    _, nodes = c.catalog.service("consul")
    assert [(n["Node"], n["ServiceID"], n["ServicePort"]) for n in nodes] == [
        ("node-a", "consul", 8300)
    ]
    assert nodes[0]["ServiceMeta"]["version"]
    _, services = c.catalog.services()
    assert "consul" in services
    _, entries = c.health.service("consul", passing=True)
    assert [e["Node"]["Node"] for e in entries] == ["node-a"]
    # Consul's leader registers it, not the agent: no agent service.
    assert "consul" not in c.agent.services()


def test_filter_on_catalog_services_picks_instances(c: consul.Consul, server: ConsulServer) -> None:
    prod, dev = uniq("prod-svc"), uniq("dev-svc")
    c.agent.service.register(prod, tags=["prod", "v2"], port=80)
    c.agent.service.register(dev, tags=["dev"], port=81)
    _, services = c.catalog.services(filter_expr='"prod" in ServiceTags')
    assert services == {prod: ["prod", "v2"]}
    _, services = c.catalog.services(filter_expr=f'ServiceName == "{dev}"')
    assert services == {dev: ["dev"]}
    status, _, body = http(server, "GET", "/v1/catalog/services?filter=NoSuchField==1")
    assert status == 400 and b"NoSuchField" in body


def test_register_naming_another_datacenter_is_refused(
    c: consul.Consul, server: ConsulServer
) -> None:
    node = uniq("ext")
    body = {"Datacenter": "dc2", "Node": node, "Address": "10.1.1.1"}
    status, _, text = http(server, "PUT", "/v1/catalog/register", body)
    assert (status, text) == (500, b"No path to datacenter")
    assert c.catalog.node(node)[1] is None  # nothing stored
    # ?dc wins over the body, as Consul's parseDC: this one is local.
    status, _, _ = http(server, "PUT", "/v1/catalog/register?dc=dc1", body)
    assert status == 200
    assert c.catalog.node(node)[1]["Node"]["Node"] == node
    body = {"Datacenter": "dc1", "Node": node}
    assert http(server, "PUT", "/v1/catalog/deregister", body)[0] == 200


def test_peer_is_not_ignored(c: consul.Consul, server: ConsulServer) -> None:
    for path in ("/v1/catalog/service/consul", "/v1/health/service/consul", "/v1/catalog/services"):
        status, _, body = http(server, "GET", f"{path}?peer=other-cluster")
        assert status == 400 and b'"other-cluster"' in body and b"peering" in body, path
        assert http(server, "GET", f"{path}?peer=")[0] == 200  # empty: this cluster


def test_connect_fields_are_refused_not_ignored(c: consul.Consul, server: ConsulServer) -> None:
    name = uniq("mesh")
    for extra in (
        {"Connect": {"SidecarService": {}}},
        {"Connect": {"SidecarService": {"Port": 21000}}},
        {"Connect": {"Native": True}},
        {"Kind": "connect-proxy", "Proxy": {"DestinationServiceName": "web"}},
        {"Proxy": {"DestinationServiceName": "web"}},
    ):
        status, _, body = http(
            server, "PUT", "/v1/agent/service/register", {"Name": name, "Port": 80, **extra}
        )
        if extra == {"Connect": {"SidecarService": {}}}:
            # Consul: an empty SidecarService still asks for a sidecar.
            assert status == 400, body
        assert status == 400 and b"cove does not implement" in body, (extra, body)
    assert name not in {s["Service"] for s in c.agent.services().values()}
    assert c.catalog.service(name)[1] == []
    # Through the catalog too.
    svc = {"Service": name, "Connect": {"Native": True}}
    reg = {"Node": "node-a", "Address": "127.0.0.1", "Service": svc}
    assert http(server, "PUT", "/v1/catalog/register", reg)[0] == 400
    # An empty Connect asks for nothing.
    status, _, _ = http(
        server, "PUT", "/v1/agent/service/register", {"Name": name, "Port": 80, "Connect": {}}
    )
    assert status == 200


def test_check_on_unknown_service_is_404(c: consul.Consul, server: ConsulServer) -> None:
    cid = uniq("chk")
    body = {"Name": cid, "ServiceID": "no-such-service", "TTL": "10s"}
    status, _, text = http(server, "PUT", "/v1/agent/check/register", body)
    assert status == 404 and b'"no-such-service" does not exist' in text
    # py-consul reads a 404 as False (a 400 would raise BadRequest).
    assert (
        c.agent.check.register(cid, consul.Check.ttl("10s"), service_id="no-such-service") is False
    )
    assert cid not in c.agent.checks()


def test_release_with_a_vanished_session_is_false(c: consul.Consul) -> None:
    key = uniq("lock")
    sid = c.session.create(ttl=10)
    assert c.kv.put(key, "v", acquire=sid)
    c.session.destroy(sid)
    assert c.kv.put(key, "v2", release=sid) is False
    assert c.kv.get(key)[1]["Value"] == b"v"  # nothing written
    # An unknown session on acquire stays an error, as in Consul.
    with pytest.raises(consul.ConsulException):
        c.kv.put(key, "v3", acquire=sid)


def test_agent_services_in_consuls_shape(c: consul.Consul) -> None:
    name = uniq("shape")
    c.agent.service.register(
        name,
        service_id=name,
        address="10.0.0.9",
        port=8080,
        tags=["a"],
        meta={"k": "v"},
    )
    svc = c.agent.services()[name]
    assert svc == {
        "ID": name,
        "Service": name,
        "Tags": ["a"],
        "Meta": {"k": "v"},
        "Port": 8080,
        "Address": "10.0.0.9",
        "Weights": {"Passing": 1, "Warning": 1},
        "EnableTagOverride": False,
        "Datacenter": "dc1",
    }
    one = c.agent.service_definition(name)
    assert one["Datacenter"] == "dc1" and one["ContentHash"]


def test_service_tagged_addresses_use_consuls_keys(c: consul.Consul, server: ConsulServer) -> None:
    name = uniq("tagged")
    body = {
        "Name": name,
        "Port": 80,
        "TaggedAddresses": {
            "lan": {"address": "10.0.0.1", "port": 8000},
            "wan": {"Address": "198.18.0.1", "Port": 80},
        },
    }
    assert http(server, "PUT", "/v1/agent/service/register", body)[0] == 200
    want = {
        "lan": {"Address": "10.0.0.1", "Port": 8000},
        "wan": {"Address": "198.18.0.1", "Port": 80},
    }
    assert c.agent.services()[name]["TaggedAddresses"] == want
    assert c.catalog.service(name)[1][0]["ServiceTaggedAddresses"] == want
    bad = {**body, "Name": uniq("bad"), "TaggedAddresses": {"lan": "10.0.0.1"}}
    assert http(server, "PUT", "/v1/agent/service/register", bad)[0] == 400
    bad = {**body, "Name": uniq("bad"), "TaggedAddresses": {"lan": {"Port": 70000}}}
    assert http(server, "PUT", "/v1/agent/service/register", bad)[0] == 400


def test_self_member_is_the_members_entry(c: consul.Consul) -> None:
    member = c.agent.self()["Member"]
    listed = [m for m in c.agent.members() if m["Name"] == "node-a"]
    assert listed == [member]
    assert member["Status"] == 1 and member["Tags"]["role"] == "consul"


def test_ttl_checks_expire_on_time(c: consul.Consul) -> None:
    """Each check turns critical within 0.2 s of its TTL (the old 0.5 s
    sweep was up to half a second late)."""
    name = uniq("ttl")
    c.agent.service.register(name, service_id=name, port=1)
    ttls = {f"{name}-{i}": ttl for i, ttl in enumerate((0.6, 0.75, 0.9, 1.05))}
    for cid, ttl in ttls.items():
        c.agent.check.register(
            cid, consul.Check.ttl(f"{int(ttl * 1000)}ms"), check_id=cid, service_id=name
        )
    armed: dict[str, float] = {}
    for cid in ttls:
        c.agent.check.ttl_pass(cid)
        armed[cid] = time.monotonic()  # the deadline was set before this
    seen: dict[str, float] = {}
    end = time.monotonic() + 5
    while len(seen) < len(ttls) and time.monotonic() < end:
        checks = c.agent.checks()
        now = time.monotonic()
        for cid in ttls:
            if cid not in seen and checks[cid]["Status"] == "critical":
                seen[cid] = now
        time.sleep(0.01)
    assert set(seen) == set(ttls)
    late = {cid: round(seen[cid] - armed[cid] - ttl, 3) for cid, ttl in ttls.items()}
    assert max(late.values()) < 0.2, late
    assert c.agent.checks()[f"{name}-0"]["Output"] == "TTL expired"


def test_root_says_what_this_is(server: ConsulServer) -> None:
    status, _, body = http(server, "GET", "/")
    assert status == 200 and b"UI disabled" in body and b"/v1/" in body
    assert http(server, "GET", "/no/such/route")[0] == 404


def test_404s_of_indexed_routes_carry_the_index(server: ConsulServer) -> None:
    for path in (
        f"/v1/kv/{uniq('missing')}",
        f"/v1/config/service-defaults/{uniq('missing')}",
        f"/v1/coordinate/node/{uniq('missing')}",
    ):
        status, headers, _ = http(server, "GET", path)
        assert status == 404 and int(headers["X-Consul-Index"]) >= 1, path
