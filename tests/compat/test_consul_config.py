"""/v1/config: service-defaults and proxy-defaults CRUD with ?cas through
py-consul; the Connect kinds and fields refused with a 400 that says why;
ACLs (service:write, mesh:write) enforced. SQLite and etcd."""

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
ROOT = "7b1b5b8e-1111-4c1a-9d7e-000000000005"


@pytest.fixture(scope="module")
def server(backend_store: Store) -> Iterator[ConsulServer]:
    with ConsulServer(backend_store, SystemClock(), node_name="cfg-a") as srv:
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


def test_service_defaults_crud_with_cas(c: consul.Consul, server: ConsulServer) -> None:
    name = f"svc-{secrets.token_hex(3)}"
    assert c.config.set("service-defaults", name, {"Protocol": "http", "Meta": {"team": "a"}})
    entry = c.config.get("service-defaults", name)
    assert (entry["Kind"], entry["Name"], entry["Protocol"], entry["Meta"]) == (
        "service-defaults",
        name,
        "http",
        {"team": "a"},
    )
    index = entry["ModifyIndex"]
    assert name in [e["Name"] for e in c.config.list("service-defaults")]
    # ?cas: a stale index loses, the current one wins; 0 only creates.
    assert c.config.set("service-defaults", name, {"Protocol": "grpc"}, cas=index - 1) is False
    assert c.config.set("service-defaults", name, {"Protocol": "grpc"}, cas=0) is False
    assert c.config.set("service-defaults", name, {"Protocol": "grpc"}, cas=index) is True
    entry = c.config.get("service-defaults", name)
    assert entry["Protocol"] == "grpc" and entry["ModifyIndex"] > index
    assert c.config.delete("service-defaults", name, cas=index) is False
    assert c.config.delete("service-defaults", name, cas=entry["ModifyIndex"]) is True
    status, body = http(server, "GET", f"/v1/config/service-defaults/{name}")
    assert (status, body) == (
        404,
        f'Config entry not found for "service-defaults" / "{name}"'.encode(),
    )
    assert http(server, "DELETE", f"/v1/config/service-defaults/{name}") == (200, b"{}")


def test_proxy_defaults_is_stored_as_given(c: consul.Consul, server: ConsulServer) -> None:
    config = {"Config": {"protocol": "http", "local_connect_timeout_ms": 1000}}
    assert c.config.set("proxy-defaults", "global", config)
    entry = c.config.get("proxy-defaults", "global")
    assert entry["Config"] == config["Config"]
    status, body = http(
        server, "PUT", "/v1/config", {"Kind": "proxy-defaults", "Name": "web", "Config": {}}
    )
    assert status == 400 and b'only "global" is supported' in body


def test_bad_entries_are_refused_and_nothing_stored(c: consul.Consul, server: ConsulServer) -> None:
    name = f"bad-{secrets.token_hex(3)}"
    for body, why in (
        ({"Kind": "service-router", "Name": name}, b"configures Consul Connect"),
        ({"Kind": "no-such-kind", "Name": name}, b"invalid config entry kind: no-such-kind"),
        ({"Kind": "service-defaults"}, b"Name is required"),
        ({"Name": name}, b"Kind is required"),
        ({"Kind": "service-defaults", "Name": name, "Protocol": "smtp"}, b"invalid protocol"),
        ({"Kind": "service-defaults", "Name": name, "Mode": "transparent"}, b"Mode configures"),
        ({"Kind": "service-defaults", "Name": name, "Bogus": 1}, b"invalid config key"),
    ):
        status, text = http(server, "PUT", "/v1/config", body)
        assert status == 400 and why in text, (body, text)
    assert http(server, "GET", f"/v1/config/service-defaults/{name}")[0] == 404
    assert http(server, "GET", "/v1/config/service-resolver")[0] == 400


def test_config_entries_need_their_rules(tmp_path_factory: pytest.TempPathFactory) -> None:
    with backends.acl_server(tmp_path_factory.mktemp("acl"), "cfg-acl", ROOT) as srv:
        entry = {"Kind": "service-defaults", "Name": "web", "Protocol": "http"}
        assert http(srv, "PUT", "/v1/config", entry)[0] == 403
        proxy = {"Kind": "proxy-defaults", "Name": "global"}
        assert http(srv, "PUT", "/v1/config", proxy)[0] == 403
        assert http(srv, "PUT", "/v1/config", entry, ROOT) == (200, b"true")
        assert http(srv, "GET", "/v1/config/service-defaults/web")[0] == 403
        assert http(srv, "DELETE", "/v1/config/service-defaults/web")[0] == 403
        status, body = http(srv, "GET", "/v1/config/service-defaults")
        assert (status, json.loads(body)) == (200, [])
        assert http(srv, "GET", "/v1/config/service-defaults/web", token=ROOT)[0] == 200
