"""The /v1/acl routes and ACL enforcement over HTTP without root: a
ConsulServer on loopback with a memory store."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from cove.acl import AclService
from cove.agent.consul import ConsulServer
from cove.clock import SystemClock
from cove.store.memory import MemoryStore

ROOT = "0b7c5d1e-2f3a-4b5c-8d6e-7f8091a2b3c4"


def http(
    srv: ConsulServer, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(srv.url + path, data=data, method=method)
    if token is not None:
        req.add_header("X-Consul-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw, status, headers = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as err:
        raw, status, headers = err.read(), err.code, dict(err.headers)
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, raw.decode()


@pytest.fixture(scope="module")
def srv() -> Iterator[ConsulServer]:
    store = MemoryStore(SystemClock())
    acl = AclService(
        store,
        SystemClock(),
        enabled=True,
        default_policy="deny",
        initial_management=ROOT,
        node_name="n1",
    )
    acl.setup()
    with ConsulServer(store, SystemClock(), node_name="n1", run_checks=False, acl=acl) as server:
        yield server
    store.close()


def test_acls_off_routes_answer_401() -> None:
    store = MemoryStore(SystemClock())
    with ConsulServer(store, SystemClock(), run_checks=False) as server:
        for method, path in (("GET", "/v1/acl/token/self"), ("PUT", "/v1/acl/policy")):
            status, _, body = http(server, method, path, token=ROOT)
            assert (status, body) == (401, "ACL support disabled")
        assert http(server, "PUT", "/v1/kv/x", "1", token="bogus")[0] == 200
    store.close()


def test_named_routes_and_lists(srv: ConsulServer) -> None:
    status, _, pol = http(srv, "PUT", "/v1/acl/policy", {"Name": "ro", "Rules": ""}, ROOT)
    assert status == 200
    assert http(srv, "GET", "/v1/acl/policy/name/ro", token=ROOT)[2]["ID"] == pol["ID"]
    _, _, role = http(
        srv, "PUT", "/v1/acl/role", {"Name": "r", "Policies": [{"ID": pol["ID"]}]}, ROOT
    )
    assert http(srv, "GET", "/v1/acl/role/name/r", token=ROOT)[2]["ID"] == role["ID"]
    _, _, tok = http(srv, "PUT", "/v1/acl/token", {"Roles": [{"Name": "r"}]}, ROOT)
    _, _, by_role = http(srv, "GET", f"/v1/acl/tokens?role={role['ID']}", token=ROOT)
    assert [t["AccessorID"] for t in by_role] == [tok["AccessorID"]]
    _, _, roles = http(srv, "GET", f"/v1/acl/roles?policy={pol['ID']}", token=ROOT)
    assert [r["Name"] for r in roles] == ["r"]
    # "self" is the caller's token, not an accessor called "self".
    status, _, me = http(srv, "GET", "/v1/acl/token/self", token=tok["SecretID"])
    assert (status, me["AccessorID"], me["SecretID"]) == (200, tok["AccessorID"], tok["SecretID"])
    # Deleting a role leaves the token, without the link.
    assert http(srv, "DELETE", f"/v1/acl/role/{role['ID']}", token=ROOT)[0] == 200
    assert http(srv, "GET", f"/v1/acl/token/{tok['AccessorID']}", token=ROOT)[2]["Roles"] == []
    status, _, body = http(srv, "GET", "/v1/acl/role/name/r", token=ROOT)
    assert (status, body) == (403, "ACL not found")


def test_acl_routes_need_acl_rights(srv: ConsulServer) -> None:
    _, _, tok = http(srv, "PUT", "/v1/acl/token", {"Description": "nobody"}, ROOT)
    status, _, body = http(srv, "GET", "/v1/acl/policies", token=tok["SecretID"])
    assert status == 403 and "lacks permission 'acl:read'" in body
    status, _, body = http(
        srv, "DELETE", f"/v1/acl/token/{tok['AccessorID']}", token=tok["SecretID"]
    )
    assert status == 403 and "acl:write" in body


def test_agent_rules_guard_agent_endpoints(srv: ConsulServer) -> None:
    rules = 'agent "n1" { policy = "read" }'
    http(srv, "PUT", "/v1/acl/policy", {"Name": "agent-read", "Rules": rules}, ROOT)
    _, _, tok = http(srv, "PUT", "/v1/acl/token", {"Policies": [{"Name": "agent-read"}]}, ROOT)
    assert http(srv, "GET", "/v1/agent/self", token=tok["SecretID"])[0] == 200
    assert http(srv, "GET", "/v1/agent/self")[0] == 403
    status, _, _ = http(srv, "PUT", "/v1/agent/token/default", {"Token": ROOT}, tok["SecretID"])
    assert status == 403  # setting the agent's tokens needs agent:write
