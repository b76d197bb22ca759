"""/v1/operator/...: the raft configuration, autopilot and usage as the
store really is (SQLite: this agent, one voter; etcd: its members and its
leader), through py-consul, with operator:read / operator:write enforced."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator

import backends
import consul
import pytest

from cove.agent.consul import ConsulServer
from cove.clock import SystemClock
from cove.store.base import Store
from cove.store.etcd import EtcdStore

backend_store = backends.backend_store  # the fixture: SQLite, then etcd
ROOT = "7b1b5b8e-1111-4c1a-9d7e-000000000004"


@pytest.fixture(scope="module")
def server(backend_store: Store) -> Iterator[ConsulServer]:
    with ConsulServer(backend_store, SystemClock(), node_name="op-a") as srv:
        yield srv


@pytest.fixture
def c(server: ConsulServer) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=server.port)


def status_of(server: ConsulServer, method: str, path: str, token: str = "") -> int:
    headers = {"X-Consul-Token": token} if token else {}
    data = b"{}" if method == "PUT" else None
    req = urllib.request.Request(server.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_raft_configuration_is_the_stores(c: consul.Consul, server: ConsulServer) -> None:
    config = c.operator.raft_config()
    servers = config["Servers"]
    assert len(servers) == 1 and servers[0]["Leader"] and servers[0]["Voter"]
    if isinstance(server.registry.store, EtcdStore):
        # etcd's member: its name and client address, not this agent.
        etcd_url = server.registry.store.cluster()["members"][0]["client_urls"][0]
        assert servers[0]["Address"] == etcd_url.split("://", 1)[1]
    else:
        assert (servers[0]["Node"], servers[0]["Address"]) == ("op-a", "127.0.0.1:8300")
    assert config["Index"] > 0


def test_autopilot_health_state_and_configuration(c: consul.Consul, server: ConsulServer) -> None:
    health = c.operator.autopilot_health()
    assert health["Healthy"] is True and health["FailureTolerance"] == 0
    assert [s["Leader"] for s in health["Servers"]] == [True]
    # py-consul has no call for the state: raw HTTP.
    with urllib.request.urlopen(f"{server.url}/v1/operator/autopilot/state") as resp:
        state = json.loads(resp.read())
    assert state["Leader"] in state["Servers"] and state["Voters"] == [state["Leader"]]
    config = c.operator.autopilot_configuration()
    assert config["CleanupDeadServers"] is True
    # Nothing to configure: refused, not stored and ignored.
    assert status_of(server, "PUT", "/v1/operator/autopilot/configuration") == 400
    with pytest.raises(consul.exceptions.BadRequest, match="no raft of its own"):
        c.operator.raft_transfer_leader()
    with pytest.raises(consul.exceptions.BadRequest, match="no gossip keyring"):
        c.operator.keyring_list()


def test_usage_counts_the_catalog(c: consul.Consul) -> None:
    name = f"use-{secrets.token_hex(3)}"
    before = c.operator.usage()["Usage"]["dc1"]
    c.agent.service.register(name, service_id=f"{name}-1", port=1)
    c.agent.service.register(name, service_id=f"{name}-2", port=2)
    after = c.operator.usage()["Usage"]["dc1"]
    assert after["Services"] == before["Services"] + 1
    assert after["ServiceInstances"] == before["ServiceInstances"] + 2
    assert after["Nodes"] >= 1 and after["ConnectServiceInstances"]["connect-proxy"] == 0


def test_operator_endpoints_need_operator_rules(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with backends.acl_server(tmp_path_factory.mktemp("acl"), "op-acl", ROOT) as srv:
        for method, path in (
            ("GET", "/v1/operator/raft/configuration"),
            ("GET", "/v1/operator/autopilot/health"),
            ("GET", "/v1/operator/autopilot/state"),
            ("GET", "/v1/operator/autopilot/configuration"),
            ("PUT", "/v1/operator/autopilot/configuration"),
            ("GET", "/v1/operator/usage"),
        ):
            assert status_of(srv, method, path) == 403, path
        assert status_of(srv, "GET", "/v1/operator/raft/configuration", ROOT) == 200
        anon = consul.Consul(host="127.0.0.1", port=srv.port)
        with pytest.raises(consul.ACLPermissionDenied):
            anon.operator.raft_config()
