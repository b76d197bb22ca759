"""The state store: etcd's data model behind one protocol, three backends.

``open_store(url, clock)`` picks the backend from a URL:

- ``memory:``                                 in-process, for tests
- ``sqlite:/path/to/file.db``                 the default, one host
- ``etcd://host:port[,host:port...]``         a cluster (JSON gateway), plain HTTP
- ``etcds://host:port[,host:port...]``        the same over TLS (``ca``, and the
                                              client's ``cert``/``key`` when the
                                              cluster wants client certificates)

Several etcd endpoints are members of one cluster: the client fails over
between them and retries what etcd says may be retried, for up to
``timeout`` seconds a request (see ``cove.store.etcd_transport``).

``WatchHub`` fans one watch over the whole keyspace out to subscribers.
``local_store(store)`` returns a backend's ``LocalStore`` abilities (memory
and SQLite: exclusive transaction, commit listener, group commit) or None
(etcd); nothing above the store looks at a backend's class.
"""

from __future__ import annotations

import importlib
from pathlib import Path
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


def open_store(
    url: str,
    clock: Clock,
    *,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    timeout: float | None = None,
) -> Store:
    """Open the store a URL names. Raises ``InvalidArgument`` for a URL of no
    known backend, TLS files given for a store without TLS, or TLS files
    that cannot be read or do not match; ``StoreError`` when the backend
    cannot be opened. An etcd store does not connect here: its first request
    does."""
    from cove.store.memory import MemoryStore
    from cove.store.sqlite import SqliteStore

    tls_files = ca is not None or cert is not None or key is not None
    if tls_files and not url.startswith("etcds://"):
        raise InvalidArgument(
            "--store-ca, --store-cert and --store-key are for an etcd store over TLS: "
            "write its URL as etcds://host:port[,host:port...]",
            url=url,
        )
    if url in ("memory:", "memory://"):
        return MemoryStore(clock)
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:")
        if path.startswith("//"):  # sqlite:///abs/path, as SQLAlchemy spells it
            path = path[2:]
        if not path or path.endswith("/"):
            raise InvalidArgument("a sqlite store URL needs a file path", url=url)
        return SqliteStore(path, clock)
    for scheme, transport in (("etcd://", "http"), ("etcds://", "https")):
        if url.startswith(scheme):
            return _open_etcd(url, scheme, transport, clock, (ca, cert, key), timeout)
    raise InvalidArgument(
        "unknown store URL (want memory:, sqlite:/path, etcd://host:port or etcds://host:port)",
        url=url,
    )


def _open_etcd(
    url: str,
    scheme: str,
    transport: str,
    clock: Clock,
    files: tuple[Path | None, Path | None, Path | None],
    timeout: float | None,
) -> Store:
    from cove.store.etcd import EtcdStore
    from cove.store.etcd_transport import DEFAULT_TIMEOUT, EtcdTls

    hosts = [h.strip() for h in url.removeprefix(scheme).rstrip("/").split(",")]
    if not all(hosts) or any("/" in h or "@" in h for h in hosts):
        raise InvalidArgument(f"an etcd store URL is {scheme}host:port[,host:port...]", url=url)
    context = EtcdTls(*files).context() if transport == "https" else None
    return EtcdStore(
        [f"{transport}://{h}" for h in hosts],
        clock,
        tls=context,
        timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
    )
