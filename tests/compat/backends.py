"""The store under the compat tests: ``backend_store`` is one fixture
parametrized over SQLite (the default, one host) and etcd (a cluster), so the
same Consul client tests cover the registry's in-process write path (an
exclusive local transaction, group commit, a commit listener) and its etcd
path (compare-and-swap retries, a watch thread).

A module opts in with ``backend_store = backends.backend_store`` and builds
its server over that fixture; each module
gets a fresh store (on etcd, a private etcd of its own, stopped by PID), so
modules never see each other's keys. Tests marked ``etcd`` are the etcd runs;
``-m "not etcd"`` leaves them out.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cove.acl import AclService
from cove.agent.consul import ConsulServer
from cove.clock import SystemClock
from cove.store.base import Store
from cove.store.etcd import EtcdStore
from cove.store.memory import MemoryStore
from cove.store.sqlite import SqliteStore
from etcd_fixture import run_etcd


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)],
)
def backend_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """A fresh store of each backend, for one test module."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("compat-store") / "state.db"
        sqlite = SqliteStore(str(path), SystemClock())
        try:
            yield sqlite
        finally:
            sqlite.close()
        return
    with run_etcd() as url:
        etcd = EtcdStore([url], SystemClock())
        try:
            yield etcd
        finally:
            etcd.close()


@contextlib.contextmanager
def acl_server(folder: Path, node_name: str, root: str) -> Iterator[ConsulServer]:
    """A Consul server with ACLs on (default deny, ``root`` the management
    token) on a SQLite store of its own in ``folder``."""
    store = SqliteStore(str(folder / "s.db"), SystemClock())
    acl = AclService(
        store,
        SystemClock(),
        enabled=True,
        default_policy="deny",
        initial_management=root,
        node_name=node_name,
    )
    acl.setup()
    try:
        with ConsulServer(store, SystemClock(), node_name=node_name, acl=acl) as srv:
            yield srv
    finally:
        store.close()


class _LaggingWatch:
    """A store whose watch delivers each batch late, as etcd's does under
    load (no in-process abilities: the hub watches it)."""

    def __init__(self, inner: MemoryStore, lag: float) -> None:
        self._inner = inner
        self._lag = lag

    def local(self) -> None:
        return None

    def watch(self, *args: Any, **kwargs: Any) -> Any:
        watch = self._inner.watch(*args, **kwargs)
        lag = self._lag

        class Late:
            def next(self, timeout: float | None = None) -> Any:
                events = watch.next(timeout)
                if events:
                    time.sleep(lag)
                return events

            def close(self) -> None:
                watch.close()

        return Late()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextlib.contextmanager
def lagging_server(lag: float) -> Iterator[tuple[ConsulServer, MemoryStore]]:
    """A Consul server over a memory store whose watch delivers each batch
    ``lag`` seconds late, as etcd's does under load; and that store (its
    revision is the truth the answers are held to)."""
    inner = MemoryStore(SystemClock())
    try:
        store = _LaggingWatch(inner, lag)
        with ConsulServer(store, SystemClock(), node_name="lag-node") as srv:  # type: ignore[arg-type]
            yield srv, inner
    finally:
        inner.close()
