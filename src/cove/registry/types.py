"""The registry's types, by concept, under one name for their importers:

- ``keys``       the store key layout under ``registry/``
- ``durations``  Go-style durations (``parse_duration``, ``format_duration``)
- ``records``    Node, ServiceInstance, HealthCheck, KVEntry, Session
- ``checks``     Status, CheckKind and CheckDefinition (what an agent runs),
                 with one record per kind for that kind's own fields

New code may import from those modules directly.
"""

from __future__ import annotations

from cove.registry.checks import (
    AliasTarget,
    CheckDefinition,
    CheckKind,
    CheckSpec,
    GrpcProbe,
    H2PingProbe,
    HttpProbe,
    ScriptArgs,
    Status,
    TcpProbe,
    Ttl,
    UdpProbe,
)
from cove.registry.durations import format_duration, parse_duration
from cove.registry.keys import (
    AGENT,
    CHECKS,
    KV,
    NODE_CHECKS,
    NODES,
    ROOT,
    SERVICES,
    SESSIONS,
    agent_check_key,
    agent_service_key,
    check_key,
    check_prefix,
    kv_key,
    node_key,
    seg,
    service_key,
    service_prefix,
    session_key,
)
from cove.registry.records import (
    CONSUL_SERVICE,
    CONSUL_VERSION,
    OUTPUT_LIMIT,
    SERF_CHECK,
    Behavior,
    HealthCheck,
    KVEntry,
    Node,
    ServiceInstance,
    Session,
)

__all__ = [
    "AGENT",
    "CHECKS",
    "CONSUL_SERVICE",
    "CONSUL_VERSION",
    "KV",
    "NODES",
    "NODE_CHECKS",
    "OUTPUT_LIMIT",
    "ROOT",
    "SERF_CHECK",
    "SERVICES",
    "SESSIONS",
    "AliasTarget",
    "Behavior",
    "CheckDefinition",
    "CheckKind",
    "CheckSpec",
    "GrpcProbe",
    "H2PingProbe",
    "HealthCheck",
    "HttpProbe",
    "KVEntry",
    "Node",
    "ScriptArgs",
    "ServiceInstance",
    "Session",
    "Status",
    "TcpProbe",
    "Ttl",
    "UdpProbe",
    "agent_check_key",
    "agent_service_key",
    "check_key",
    "check_prefix",
    "format_duration",
    "kv_key",
    "node_key",
    "parse_duration",
    "seg",
    "service_key",
    "service_prefix",
    "session_key",
]
