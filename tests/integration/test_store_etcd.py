"""The Store contract on a real etcd, plus etcd-specific failure handling."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from cove.clock import SystemClock
from cove.errors import InvalidArgument, StoreError
from cove.store import EtcdStore, WatchHub, open_store
from etcd_fixture import etcd_server, run_etcd
from store_contract import Backend, StoreContract

pytestmark = pytest.mark.etcd

__all__ = ["etcd_server"]  # the fixture, for this module until conftest imports it


class TestEtcdContract(StoreContract):
    @pytest.fixture
    def backend(self, etcd_server: str) -> Iterator[Backend]:
        store = EtcdStore([etcd_server], SystemClock())
        yield Backend(store, time.sleep, "etcd", local=False)
        store.close()


def test_open_store_etcd_url_and_failover(etcd_server: str) -> None:
    hostport = etcd_server.removeprefix("http://")
    # The first endpoint refuses connections; the store moves on to the next.
    store = open_store(f"etcd://127.0.0.1:1,{hostport}", SystemClock())
    assert store.put("t/failover", b"1") > 1
    kv = store.get("t/failover")
    assert kv is not None and kv.value == b"1"
    store.close()
    with pytest.raises(InvalidArgument):
        open_store("etcd://", SystemClock())


def test_unreachable_etcd_is_a_store_error() -> None:
    store = EtcdStore(["http://127.0.0.1:1"], SystemClock())
    with pytest.raises(StoreError):
        store.get("x")
    with pytest.raises(StoreError):
        store.watch("x")
    store.close()


def test_hub_over_etcd_and_a_watch_that_outlives_etcd() -> None:
    with run_etcd() as url:
        store = EtcdStore([url], SystemClock())
        hub = WatchHub(store, poll=0.1)
        hub.start()
        seen: list[str] = []
        hub.subscribe("svc/", lambda events: seen.extend(e.kv.key for e in events))
        rev = store.put("svc/a", b"1")
        store.put("other", b"x")
        assert hub.wait_for(rev, timeout=10)
        assert seen == ["svc/a"]
        watch = store.watch("svc/")
        hub.stop()
    # etcd is gone now: the open watch reports it instead of hanging.
    deadline = time.monotonic() + 10
    with pytest.raises(StoreError):
        while time.monotonic() < deadline:
            watch.next(timeout=0.5)
    with pytest.raises(StoreError):
        store.put("svc/b", b"2")
    store.close()


def test_hub_cache_over_etcd_names_deletes_without_etcd_sending_old_values() -> None:
    """With a cache, the hub watches without previous values and fills
    them in from the cache: a delete under a cached prefix still says what
    was deleted, and passes read the cache, not etcd."""
    with run_etcd() as url:
        store = EtcdStore([url], SystemClock())
        store.put("containers/old", b"before")
        hub = WatchHub(store, poll=0.1, cache=("containers/",))
        seen: list[tuple[str, str, bytes | None]] = []
        hub.subscribe(
            "",
            lambda events: seen.extend(
                (e.type.value, e.kv.key, e.prev.value if e.prev else None) for e in events
            ),
        )
        hub.start()
        try:
            store.put("containers/a", b"1")
            store.put("containers/a", b"2")
            store.put("other/x", b"x")
            store.delete("other/x")
            rev = store.delete("containers/old")
            assert hub.wait_for(rev, timeout=10)
            assert seen == [
                ("put", "containers/a", None),
                ("put", "containers/a", b"1"),
                ("put", "other/x", None),
                ("delete", "other/x", None),  # not cached: etcd sent no old value
                ("delete", "containers/old", b"before"),
            ]
            assert hub.reads.caught_up(5) is hub.reads
            got = hub.reads.range("containers/")
            assert [(kv.key, kv.value) for kv in got.kvs] == [("containers/a", b"2")]
            assert got.revision == rev
        finally:
            hub.stop()
            store.close()
