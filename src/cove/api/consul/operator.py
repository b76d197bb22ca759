"""/v1/operator/...: the raft configuration, autopilot and usage, mapped
honestly onto what holds cove's state. cove runs no raft of its own: with
SQLite the store is this agent's file (one voter, this node, always the
leader); with etcd the voters are etcd's members and the leader etcd's.
Autopilot's settings cannot be changed: etcd manages its own membership."""

from __future__ import annotations

import time
import uuid
from typing import Any

from cove.acl import Access
from cove.api import http as web
from cove.api.consul.common import authorize, consul_errors, ctx, options, reply, run
from cove.errors import InvalidArgument
from cove.registry import VERSION
from cove.registry import types as t

_STARTED = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _servers(request: web.Request) -> tuple[list[dict[str, Any]], int]:
    """(servers, raft index): each with ID, Node, Address, Leader, Voter."""
    reg = ctx(request).registry
    cluster = getattr(reg.store, "cluster", None)
    if cluster is None:  # SQLite (or memory): this agent's own file
        node_id = reg.node.id or str(uuid.uuid5(uuid.NAMESPACE_DNS, reg.node_name))
        return (
            [
                {
                    "ID": node_id,
                    "Node": reg.node_name,
                    "Address": f"{reg.node.address}:8300",
                    "Leader": True,
                    "ProtocolVersion": "3",
                    "Voter": True,
                    "LastIndex": reg.store.revision,
                }
            ],
            reg.store.revision,
        )
    info = cluster()
    servers = []
    for m in info["members"]:
        url = (m["client_urls"] or m["peer_urls"] or [""])[0]
        address = url.split("://", 1)[-1]
        servers.append(
            {
                "ID": m["id"],
                "Node": m["name"] or m["id"],
                "Address": address,
                "Leader": m["id"] == info["leader"],
                "ProtocolVersion": "3",
                "Voter": not m["learner"],
                "LastIndex": info["index"],
            }
        )
    return servers, info["index"]


@consul_errors
async def raft_configuration(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    authz.need_scalar("operator", Access.READ)
    servers, index = await run(request, _servers, request)
    return reply({"Servers": servers, "Index": index}, index)


@consul_errors
async def raft_peer(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    authz.need_scalar("operator", Access.WRITE)
    raise InvalidArgument(
        "cove runs no raft of its own: remove a store member with etcd's own tools"
        " (etcdctl member remove); with SQLite there is only this agent"
    )


_AUTOPILOT = {
    "CleanupDeadServers": True,
    "LastContactThreshold": "200ms",
    "MaxTrailingLogs": 250,
    "MinQuorum": 0,
    "ServerStabilizationTime": "10s",
    "RedundancyZoneTag": "",
    "DisableUpgradeMigration": False,
    "UpgradeVersionTag": "",
    "CreateIndex": 1,
    "ModifyIndex": 1,
}


@consul_errors
async def autopilot_configuration(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    if request.method == "PUT":
        authz.need_scalar("operator", Access.WRITE)
        raise InvalidArgument(
            "cove has no autopilot to configure: its store (SQLite, or etcd, which manages"
            " its own membership) decides; the configuration is read-only"
        )
    authz.need_scalar("operator", Access.READ)
    return reply(_AUTOPILOT)


def _health(servers: list[dict[str, Any]]) -> dict[str, Any]:
    voters = [s for s in servers if s["Voter"]]
    entries = [
        {
            "ID": s["ID"],
            "Name": s["Node"],
            "Address": s["Address"],
            "SerfStatus": "alive",
            "Version": VERSION,
            "Leader": s["Leader"],
            "LastContact": "0s",
            "LastTerm": 1,
            "LastIndex": s["LastIndex"],
            "Healthy": True,
            "Voter": s["Voter"],
            "StableSince": _STARTED,
        }
        for s in servers
    ]
    healthy = any(s["Leader"] for s in servers)
    return {
        "Healthy": healthy,
        "FailureTolerance": max(0, (len(voters) - 1) // 2),
        "Servers": entries,
    }


@consul_errors
async def autopilot_health(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    authz.need_scalar("operator", Access.READ)
    servers, _ = await run(request, _servers, request)
    health = _health(servers)
    # Consul answers an unhealthy cluster with 429 (agent/operator_endpoint.go).
    return reply(health, status=200 if health["Healthy"] else 429)


@consul_errors
async def autopilot_state(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    authz.need_scalar("operator", Access.READ)
    servers, _ = await run(request, _servers, request)
    health = _health(servers)
    leader = next((s["ID"] for s in servers if s["Leader"]), "")
    voters = [s["ID"] for s in servers if s["Voter"]]
    return reply(
        {
            "Healthy": health["Healthy"],
            "FailureTolerance": health["FailureTolerance"],
            "OptimisticFailureTolerance": health["FailureTolerance"],
            "Servers": {
                e["ID"]: {
                    "ID": e["ID"],
                    "Name": e["Name"],
                    "Address": e["Address"],
                    "NodeStatus": "alive",
                    "Version": VERSION,
                    "LastContact": "0s",
                    "LastTerm": 1,
                    "LastIndex": e["LastIndex"],
                    "Healthy": True,
                    "StableSince": _STARTED,
                    "Status": "leader" if e["Leader"] else "voter" if e["Voter"] else "non-voter",
                    "ReadReplica": False,
                }
                for e in health["Servers"]
            },
            "Leader": leader,
            "Voters": voters,
        }
    )


@consul_errors
async def usage(request: web.Request) -> web.Response:
    authz = await authorize(request, options(request))
    authz.need_scalar("operator", Access.READ)
    reg = ctx(request).registry

    def count() -> tuple[dict[str, Any], int]:
        rr = reg.store.range(t.SERVICES)
        names = set()
        for kv in rr.kvs:
            names.add(kv.key[len(t.SERVICES) :].split("/", 1)[0])
        nodes = reg.store.range(t.NODES)
        return (
            {
                "Services": len(names),
                "ServiceInstances": len(rr.kvs),
                "ConnectServiceInstances": {
                    "api-gateway": 0,
                    "connect-native": 0,
                    "connect-proxy": 0,
                    "ingress-gateway": 0,
                    "mesh-gateway": 0,
                    "terminating-gateway": 0,
                },
                "BillableServiceInstances": len(rr.kvs),
                "Nodes": len(nodes.kvs),
            },
            rr.revision,
        )

    counts, index = await run(request, count)
    return reply({"Usage": {reg.datacenter: counts}, "Index": index}, index)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/operator/raft/configuration", raft_configuration)
    r.add_delete("/v1/operator/raft/peer", raft_peer)
    r.add_get("/v1/operator/autopilot/configuration", autopilot_configuration)
    r.add_put("/v1/operator/autopilot/configuration", autopilot_configuration)
    r.add_get("/v1/operator/autopilot/health", autopilot_health)
    r.add_get("/v1/operator/autopilot/state", autopilot_state)
    r.add_get("/v1/operator/usage", usage)
