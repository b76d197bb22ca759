"""/v1/txn with Node, Service and Check operations beside KV ones, all
committed together or not at all (Consul's agent/consul/state/txn.go), through
py-consul's txn.put, on SQLite and etcd."""

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

from cove.agent.consul import ConsulServer
from cove.clock import SystemClock
from cove.store.base import Store

backend_store = backends.backend_store  # the fixture: SQLite, then etcd
ROOT = "7b1b5b8e-1111-4c1a-9d7e-000000000006"


@pytest.fixture(scope="module")
def server(backend_store: Store) -> Iterator[ConsulServer]:
    with ConsulServer(backend_store, SystemClock(), node_name="txn-a") as srv:
        yield srv


@pytest.fixture
def c(server: ConsulServer) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=server.port)


def txn(server: ConsulServer, ops: list[Any], token: str = "") -> tuple[int, Any]:
    headers = {"X-Consul-Token": token} if token else {}
    req = urllib.request.Request(
        f"{server.url}/v1/txn", data=json.dumps(ops).encode(), method="PUT", headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        body = err.read()
        try:
            return err.code, json.loads(body)
        except ValueError:
            return err.code, body.decode()


def test_node_service_check_and_kv_in_one_transaction(c: consul.Consul) -> None:
    node = f"ext-{secrets.token_hex(3)}"
    key = f"txn/{node}"
    result = c.txn.put(
        [
            {"Node": {"Verb": "set", "Node": {"Node": node, "Address": "10.3.0.1"}}},
            {
                "Service": {
                    "Verb": "set",
                    "Node": node,
                    "Service": {"ID": "db1", "Service": "txn-db", "Port": 5432, "Tags": ["p"]},
                }
            },
            {
                "Check": {
                    "Verb": "set",
                    "Check": {
                        "Node": node,
                        "CheckID": "db1-up",
                        "Name": "db up",
                        "Status": "passing",
                        "ServiceID": "db1",
                    },
                }
            },
            {"KV": {"Verb": "set", "Key": key, "Value": base64.b64encode(b"v").decode()}},
        ]
    )
    assert result["Errors"] is None
    kinds = [next(iter(r)) for r in result["Results"]]
    assert kinds == ["Node", "Service", "Check", "KV"]
    assert result["Results"][0]["Node"]["Address"] == "10.3.0.1"
    assert result["Results"][1]["Service"]["Port"] == 5432
    index = result["Results"][0]["Node"]["ModifyIndex"]
    assert index == result["Results"][3]["KV"]["ModifyIndex"]  # one commit
    _, entries = c.health.service("txn-db")
    assert [(e["Node"]["Node"], e["Service"]["ID"]) for e in entries] == [(node, "db1")]
    assert [ch["Status"] for ch in entries[0]["Checks"] if ch["CheckID"] == "db1-up"] == ["passing"]
    # get, cas and delete
    got = c.txn.put([{"Node": {"Verb": "get", "Node": {"Node": node}}}])
    assert got["Results"][0]["Node"]["ModifyIndex"] == index
    stale = {"Node": node, "Address": "10.3.0.2", "ModifyIndex": index - 1}
    with pytest.raises(consul.ConsulException):
        c.txn.put([{"Node": {"Verb": "cas", "Node": stale}}])
    fresh = {**stale, "ModifyIndex": index}
    assert c.txn.put([{"Node": {"Verb": "cas", "Node": fresh}}])["Errors"] is None
    c.txn.put([{"Node": {"Verb": "delete", "Node": {"Node": node}}}])
    assert c.catalog.node(node)[1] is None
    assert c.health.service("txn-db")[1] == []


def test_a_failing_operation_writes_nothing(c: consul.Consul, server: ConsulServer) -> None:
    node = f"ext-{secrets.token_hex(3)}"
    status, body = txn(
        server,
        [
            {"Node": {"Verb": "set", "Node": {"Node": node, "Address": "10.3.0.9"}}},
            {"Service": {"Verb": "get", "Node": node, "Service": {"ID": "nope"}}},
            {
                "Check": {
                    "Verb": "set",
                    "Check": {"Node": "no-such-node", "CheckID": "x", "Status": "passing"},
                }
            },
        ],
    )
    assert status == 409 and body["Results"] is None
    assert [e["OpIndex"] for e in body["Errors"]] == [1, 2]
    assert "doesn't exist" in body["Errors"][1]["What"]
    assert c.catalog.node(node)[1] is None
    # Malformed operations are a 400 before anything runs.
    for ops, why in (
        ([{"Node": {"Verb": "frob", "Node": {"Node": node}}}], "unknown Node verb"),
        ([{"Node": {"Verb": "set", "Node": {"Node": node}}}], "Address is required"),
        ([{"Service": {"Verb": "set", "Service": {"Service": "s"}}}], "Node is required"),
        ([{"KV": {"Verb": "get", "Key": "a"}, "Node": {"Verb": "get"}}], "exactly one of"),
        (
            [
                {
                    "Service": {
                        "Verb": "set",
                        "Node": node,
                        "Service": {"Service": "s", "Connect": {"Native": True}},
                    }
                }
            ],
            "Connect",
        ),
    ):
        status, body = txn(server, ops)
        assert status == 400 and why in body, (ops, body)


def test_catalog_txn_needs_node_and_service_rules(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with backends.acl_server(tmp_path_factory.mktemp("acl"), "txn-acl", ROOT) as srv:
        ops = [{"Node": {"Verb": "set", "Node": {"Node": "n9", "Address": "10.0.0.9"}}}]
        assert txn(srv, ops)[0] == 403
        svc = {"Verb": "set", "Node": "n9", "Service": {"Service": "web", "Port": 1}}
        assert txn(srv, [{"Service": svc}])[0] == 403
        assert txn(srv, ops, ROOT)[0] == 200
        assert txn(srv, [{"Service": svc}], ROOT)[0] == 200
