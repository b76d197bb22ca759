"""Which cached answers a registry change invalidates."""

from __future__ import annotations

from cove.dns.registry_source import changes
from cove.dns.services import ServiceChange
from cove.store.base import Event, EventType, KeyValue


def _put(key: str) -> Event:
    return Event(EventType.PUT, KeyValue(key, b"{}", 1, 1, 1))


def test_instances_and_checks_name_their_service() -> None:
    change = changes(
        [
            _put("registry/svc/Web/node1/web-1"),
            _put("registry/chk/api%2Fv2/node1/service%3Aapi-1"),
            _put("registry/kv/whatever"),
        ]
    )
    assert change == ServiceChange(frozenset({"web", "api/v2"}), frozenset())


def test_node_records_and_node_checks() -> None:
    assert changes([_put("registry/nodes/Node1")]) == ServiceChange(
        frozenset(), frozenset({"node1"})
    )
    change = changes([_put("registry/nodechk/node1/serfHealth")])
    assert ServiceChange.ALL in change.services and change.nodes == {"node1"}
