"""/v1/coordinate/... and ?near= sorting, through py-consul, on SQLite and
etcd. cove keeps Vivaldi's model (serf's coordinate package): coordinates
are what clients PUT; the estimated round trip is the vector distance plus
both heights (plus both adjustments when positive)."""

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


@pytest.fixture(scope="module")
def server(backend_store: Store) -> Iterator[ConsulServer]:
    with ConsulServer(backend_store, SystemClock(), node_name="co-a") as srv:
        yield srv


@pytest.fixture
def c(server: ConsulServer) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=server.port)


def coord(x: float, height: float = 0.0) -> dict[str, Any]:
    return {"Vec": [x] + [0.0] * 7, "Error": 0.2, "Adjustment": 0.0, "Height": height}


def http(server: ConsulServer, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(server.url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_update_read_and_sort_near(c: consul.Consul, server: ConsulServer) -> None:
    svc = f"near-{secrets.token_hex(3)}"
    far, mid, close, blind = (f"{svc}-{n}" for n in ("far", "mid", "close", "blind"))
    for i, node in enumerate((far, blind, mid, close)):
        c.catalog.register(node, f"10.7.0.{i + 1}", service={"Service": svc, "Port": 80})
    assert c.coordinate.update("co-a", coord(0.0))
    assert c.coordinate.update(far, coord(0.300))
    assert c.coordinate.update(mid, coord(0.010, height=0.050))  # 60 ms in all
    assert c.coordinate.update(close, coord(0.020))
    _, entries = c.coordinate.node(close)
    assert entries == [{"Node": close, "Segment": "", "Coord": coord(0.020)}]
    _, listed = c.coordinate.nodes()
    assert {e["Node"] for e in listed} >= {"co-a", far, mid, close}
    # Nearest first; the node without a coordinate last.
    _, nodes = c.catalog.service(svc, near="_agent")
    assert [n["Node"] for n in nodes] == [close, mid, far, blind]
    _, entries = c.health.service(svc, near="co-a")
    assert [e["Node"]["Node"] for e in entries] == [close, mid, far, blind]
    status, body = http(server, "GET", f"/v1/catalog/nodes?near={far}")
    order = [n["Node"] for n in json.loads(body) if n["Node"].startswith(svc)]
    assert order[:3] == [far, close, mid]
    dcs = c.coordinate.datacenters()
    assert dcs[0]["Datacenter"] == "dc1" and dcs[0]["AreaID"] == "wan"
    assert "co-a.dc1" in {e["Node"] for e in dcs[0]["Coordinates"]}


def test_bad_updates_are_refused(c: consul.Consul, server: ConsulServer) -> None:
    for body, why in (
        ({"Node": "co-a", "Coord": {"Vec": [0.0] * 3}}, b"dimensionality"),
        ({"Node": "co-a", "Coord": {**coord(0.0), "Error": -1}}, b"Error must not be negative"),
        ({"Node": "co-a", "Coord": {**coord(0.0), "Height": "x"}}, b"finite numbers"),
        ({"Node": "co-a"}, b"Coord is required"),
        ({"Coord": coord(0.0)}, b"Node is required"),
        ({"Node": "not-registered", "Coord": coord(0.0)}, b"not in the catalog"),
    ):
        status, text = http(server, "PUT", "/v1/coordinate/update", body)
        assert status == 400 and why in text, (body, text)
    assert http(server, "GET", "/v1/coordinate/node/not-registered")[0] == 404


def test_coordinates_need_node_rules(tmp_path_factory: pytest.TempPathFactory) -> None:
    from cove.acl import AclService
    from cove.store.sqlite import SqliteStore

    root_token = "7b1b5b8e-1111-4c1a-9d7e-000000000007"
    store = SqliteStore(str(tmp_path_factory.mktemp("acl") / "s.db"), SystemClock())
    acl = AclService(
        store,
        SystemClock(),
        enabled=True,
        default_policy="deny",
        initial_management=root_token,
        node_name="co-acl",
    )
    acl.setup()
    try:
        with ConsulServer(store, SystemClock(), node_name="co-acl", acl=acl) as srv:
            anon = consul.Consul(host="127.0.0.1", port=srv.port)
            root = consul.Consul(host="127.0.0.1", port=srv.port, token=root_token)
            with pytest.raises(consul.ACLPermissionDenied):
                anon.coordinate.update("co-acl", coord(0.0))
            assert root.coordinate.update("co-acl", coord(0.0))
            assert http(srv, "GET", "/v1/coordinate/node/co-acl")[0] == 403
            status, body = http(srv, "GET", "/v1/coordinate/nodes")
            assert (status, json.loads(body)) == (200, [])
    finally:
        store.close()
