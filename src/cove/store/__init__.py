"""The state store: etcd's data model behind one protocol, three backends.

``open_store(url, clock)`` picks the backend from a URL:

- ``memory:``                                 in-process, for tests
- ``sqlite:/path/to/file.db``                 the default, one host
- ``etcd://host:port[,host:port...]``         a cluster (JSON gateway)

``WatchHub`` fans one watch over the whole keyspace out to subscribers.
``local_store(store)`` returns a backend's ``LocalStore`` abilities (memory
and SQLite: exclusive transaction, commit listener, group commit) or None
(etcd); nothing above the store looks at a backend's class.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cove.clock import Clock
from cove.errors import InvalidArgument
from cove.store.base import (
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    Event,
    EventType,
    Get,
    KeyValue,
    LocalStore,
    Op,
    Put,
    RangeResult,
    Store,
    TxnResult,
    Watch,
    local_store,
)

if TYPE_CHECKING:
    from cove.store.etcd import EtcdStore
    from cove.store.hub import Subscription, WatchHub
    from cove.store.memory import MemoryStore
    from cove.store.sqlite import SqliteStore

# The backends load on first use: the supervisor reads ``base`` types (through
# ``cove.dns.view``) and must not carry sqlite3 and an HTTP client for it.
_LAZY = {
    "EtcdStore": "cove.store.etcd",
    "MemoryStore": "cove.store.memory",
    "SqliteStore": "cove.store.sqlite",
    "Subscription": "cove.store.hub",
    "WatchHub": "cove.store.hub",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "Compare",
    "CompareOp",
    "CompareTarget",
    "Delete",
    "EtcdStore",
    "Event",
    "EventType",
    "Get",
    "KeyValue",
    "LocalStore",
    "MemoryStore",
    "Op",
    "Put",
    "RangeResult",
    "SqliteStore",
    "Store",
    "Subscription",
    "TxnResult",
    "Watch",
    "WatchHub",
    "local_store",
    "open_store",
]


def open_store(url: str, clock: Clock) -> Store:
    """Open the store a URL names. Raises ``InvalidArgument`` for a URL of no
    known backend, and ``StoreError`` when the backend cannot be opened."""
    from cove.store.etcd import EtcdStore
    from cove.store.memory import MemoryStore
    from cove.store.sqlite import SqliteStore

    if url in ("memory:", "memory://"):
        return MemoryStore(clock)
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:")
        if path.startswith("//"):  # sqlite:///abs/path, as SQLAlchemy spells it
            path = path[2:]
        if not path or path.endswith("/"):
            raise InvalidArgument("a sqlite store URL needs a file path", url=url)
        return SqliteStore(path, clock)
    if url.startswith("etcd://"):
        hosts = [h.strip() for h in url.removeprefix("etcd://").rstrip("/").split(",")]
        if not all(hosts):
            raise InvalidArgument("an etcd store URL needs host:port endpoints", url=url)
        return EtcdStore([f"http://{h}" for h in hosts], clock)
    raise InvalidArgument(
        "unknown store URL (want memory:, sqlite:/path or etcd://host:port)", url=url
    )
