"""User events (Consul's /v1/event/fire and /v1/event/list), kept in the
store so that every agent sharing it (one host on SQLite, a cluster on etcd)
sees an event fired at any of them.

Consul gossips an event to every agent, and each agent keeps the last 256 it
received whose node, service and tag filters (regular expressions) matched
it. cove keeps the last 256 events of the datacenter in the store; an
agent's list is those whose filters match it. Consul's index for the list is
not a revision but a hash of the last event's ID (``uuid_index``); blocking
waits until that changes.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from cove.clock import Clock
from cove.codec import dumps
from cove.errors import CoveError, InvalidArgument
from cove.registry.keys import EVENTS
from cove.registry.queries import Answer, Decoded
from cove.store.base import Delete, Put, Store

EVENT_LIMIT = 256  # events kept, as a Consul agent's buffer
SIZE_LIMIT = 512  # name + payload bytes, serf's default UserEventSizeLimit


def uuid_index(event_id: str) -> int:
    """Consul's index of an event list: the last event's ID folded into 64
    bits (agent/event_endpoint.go, uuidToUint64)."""
    hexed = event_id.replace("-", "")
    if len(hexed) != 32:
        return 1
    low = int(hexed[0:16], 16)
    high = int(hexed[16:32], 16)
    return (low ^ high) or 1


def _regex(pattern: str, what: str) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        # Consul answers a bad filter with 500 (agent/user_event.go).
        raise CoveError(f"Failed to parse {what} filter: {exc}") from exc


class Events:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._decode = Decoded(4 * EVENT_LIMIT)

    def fire(
        self,
        name: str,
        payload: bytes,
        *,
        node_filter: str = "",
        service_filter: str = "",
        tag_filter: str = "",
    ) -> dict[str, Any]:
        """Store an event; the answer Consul's PUT /v1/event/fire gives."""
        if not name:
            raise InvalidArgument("Missing name")
        if tag_filter and not service_filter:
            raise CoveError("Cannot provide tag filter without service filter")
        _regex(node_filter, "node")
        _regex(service_filter, "service")
        _regex(tag_filter, "tag")
        if len(name.encode()) + len(payload) > SIZE_LIMIT:
            raise CoveError(
                f"user event exceeds configured limit of {SIZE_LIMIT} bytes before encoding"
            )
        event = {
            "ID": str(uuid.uuid4()),
            "Name": name,
            "Payload": base64.b64encode(payload).decode() if payload else None,
            "NodeFilter": node_filter,
            "ServiceFilter": service_filter,
            "TagFilter": tag_filter,
            "Version": 1,
        }
        key = f"{EVENTS}{int(self._clock.time() * 1e9):020d}-{event['ID']}"

        self._store.txn((), [Put(key, dumps(event))])
        self._trim()
        return {**event, "LTime": 0}

    def _trim(self) -> None:
        """Drop the oldest events past ``EVENT_LIMIT`` (in small batches, no
        compares: deleting a key twice is harmless)."""
        kvs = self._store.range(EVENTS).kvs
        excess = [kv.key for kv in kvs[: max(0, len(kvs) - EVENT_LIMIT)]]
        for i in range(0, len(excess), 64):
            self._store.txn((), [Delete(k) for k in excess[i : i + 64]])

    def list(
        self,
        node: str,
        services: Mapping[str, Sequence[str]],
        name: str = "",
    ) -> Answer:
        """The events this agent received (their filters match ``node``
        and, for service and tag filters, one of its ``services`` — name to
        tags), oldest first; ``name`` keeps only those of that name. The
        answer's index is the store's; ``uuid_index`` of the last is what
        a client sees."""
        rr = self._store.range(EVENTS)
        out: list[dict[str, Any]] = []
        for kv in rr.kvs:
            d = self._decode(kv)
            if name and d["Name"] != name:
                continue
            if not _matches(d, node, services):
                continue
            out.append({**d, "LTime": kv.create_revision})
        index = max((kv.mod_revision for kv in rr.kvs), default=0)
        return Answer(out, index, rr.revision, (EVENTS,))


def _matches(event: Mapping[str, Any], node: str, services: Mapping[str, Sequence[str]]) -> bool:
    node_re = _safe(event.get("NodeFilter", ""))
    if node_re is not None and not node_re.search(node):
        return False
    service_re = _safe(event.get("ServiceFilter", ""))
    if service_re is None:
        return True
    tag_re = _safe(event.get("TagFilter", ""))
    for service, tags in services.items():
        if not service_re.search(service):
            continue
        if tag_re is None or any(tag_re.search(tag) for tag in tags):
            return True
    return False


def _safe(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern) if pattern else None
    except re.error:  # validated when fired; never match a broken one
        return re.compile(r"(?!)")
