"""The Store contract on SqliteStore, plus persistence: restart, leases in
wall time, one owner per file, and kill -9 in the middle of writes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from cove.clock import ManualClock
from cove.errors import InvalidArgument, StorageFull, StoreError, WatchCompacted
from cove.store import Compare, EventType, Put, SqliteStore, open_store
from store_contract import Backend, StoreContract


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "state.db")


class TestSqliteContract(StoreContract):
    @pytest.fixture
    def backend(self, clock: ManualClock, db: str) -> Iterator[Backend]:
        store = SqliteStore(db, clock)

        def pass_time(seconds: float) -> None:
            clock.advance(seconds)
            store.expire_leases()

        yield Backend(store, pass_time, "sqlite")
        store.close()


def test_state_history_and_leases_survive_reopen(clock: ManualClock, db: str) -> None:
    store = SqliteStore(db, clock)
    r1 = store.put("a", b"1")
    r2 = store.txn([Compare.absent("b")], [Put("b", b"2"), Put("c", b"3")]).revision
    lease = store.lease_grant(10)
    store.put("l", b"x", lease=lease)
    store.delete("c")
    expected = store.range("")
    store.close()

    again = SqliteStore(db, clock)
    assert os.stat(db).st_mode & 0o777 == 0o600
    assert again.range("") == expected
    assert again.revision == expected.revision
    events = again.watch("", r1).next(timeout=0)
    assert [(e.type, e.kv.key, e.revision) for e in events] == [
        (EventType.PUT, "a", r1),
        (EventType.PUT, "b", r2),
        (EventType.PUT, "c", r2),
        (EventType.PUT, "l", r2 + 1),
        (EventType.DELETE, "c", r2 + 2),
    ]
    assert events[-1].prev is not None and events[-1].prev.value == b"3"
    assert again.put("d", b"4") == expected.revision + 1
    # The lease keeps its wall-clock deadline across the restart.
    clock.advance(11)
    again.expire_leases()
    assert again.get("l") is None
    again.close()


def test_lease_that_ran_out_while_closed_expires_on_open(clock: ManualClock, db: str) -> None:
    store = SqliteStore(db, clock)
    lease = store.lease_grant(5)
    store.put("owned", b"1", lease=lease)
    store.close()
    clock.advance(60)
    again = SqliteStore(db, clock)
    with pytest.raises(Exception, match="lease"):
        again.lease_keepalive(lease)
    assert again.get("owned") is None
    again.close()


def test_history_is_compacted_on_disk(clock: ManualClock, db: str) -> None:
    store = SqliteStore(db, clock, history=50)
    first = store.put("k", b"0")
    for i in range(200):
        store.put("k", str(i).encode())
    with pytest.raises(WatchCompacted):
        store.watch("k", first).next(timeout=0)
    store.close()
    conn = sqlite3.connect(db)
    (oldest,) = conn.execute("SELECT min(revision) FROM events").fetchone()
    conn.close()
    assert oldest > first + 100


def test_second_process_cannot_open_the_same_file(clock: ManualClock, db: str) -> None:
    store = SqliteStore(db, clock)
    with pytest.raises(StoreError):
        SqliteStore(db, clock)
    store.close()
    SqliteStore(db, clock).close()  # free again once closed


def test_open_store_sqlite_urls(clock: ManualClock, tmp_path: Path) -> None:
    store = open_store(f"sqlite:{tmp_path}/a.db", clock)
    assert isinstance(store, SqliteStore)
    store.close()
    store = open_store(f"sqlite://{tmp_path}/b.db", clock)
    store.close()
    assert (tmp_path / "b.db").exists()
    with pytest.raises(InvalidArgument):
        open_store("sqlite:", clock)
    with pytest.raises(StoreError):
        open_store(f"sqlite:{tmp_path}/missing-dir/x.db", clock)


_WRITER = textwrap.dedent(
    """
    import sys
    from cove.clock import SystemClock
    from cove.store import Compare, Put, SqliteStore

    store = SqliteStore(sys.argv[1], SystemClock())
    n = 0
    while True:
        # Every transaction writes three keys that must always agree.
        v = str(n).encode()
        store.txn([], [Put("x/a", v), Put("x/b", v), Put("x/c", v * 50)])
        n += 1
        if n == 200:
            print("running", flush=True)
    """
)


def test_kill_9_mid_writes_leaves_a_consistent_store(clock: ManualClock, db: str) -> None:
    for attempt in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, db], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "running"
            time.sleep(0.05 * (attempt + 1))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            if proc.stdout:
                proc.stdout.close()
        store = SqliteStore(db, clock)
        a, b, c = (store.get(f"x/{k}") for k in "abc")
        assert a is not None and b is not None and c is not None
        assert a.value == b.value and c.value == a.value * 50
        assert a.mod_revision == b.mod_revision == c.mod_revision == store.revision
        assert a.version == b.version == c.version
        start = max(2, store.revision - 5000)  # within the kept history
        events = store.watch("x/", start).next(timeout=0)
        per_revision = Counter(e.revision for e in events)
        assert sorted(per_revision) == list(range(start, store.revision + 1))  # no gap
        assert set(per_revision.values()) == {3}  # no torn transaction
        store.close()


def test_a_write_sqlite_refuses_changes_nothing(clock: ManualClock, db: str) -> None:
    store = SqliteStore(db, clock)
    rev = store.put("a", b"1")
    watch = store.watch("")
    conn = sqlite3.connect(db)
    conn.execute("BEGIN EXCLUSIVE")  # another writer holds the file (e.g. a stray tool)
    store._db.execute("PRAGMA busy_timeout = 50")
    try:
        with pytest.raises(StoreError):
            store.put("a", b"2")
        with pytest.raises(StoreError):
            store.txn([], [Put("b", b"1"), Put("c", b"1")])
    finally:
        conn.rollback()
        conn.close()
    assert store.revision == rev
    kv = store.get("a")
    assert kv is not None and kv.value == b"1"
    assert store.get("b") is None
    assert watch.next(timeout=0) == []
    assert store.put("a", b"3") == rev + 1  # works again once the file is free
    store.close()
    again = SqliteStore(db, clock)
    assert [(kv.key, kv.value) for kv in again.range("").kvs] == [("a", b"3")]
    again.close()


def test_a_full_database_refuses_writes_clearly_and_recovers(db: str, clock: ManualClock) -> None:
    # SQLite's own page limit stands in for a full disk (the integration
    # tests fill a real tmpfs): SQLite answers SQLITE_FULL in both cases.
    store = SqliteStore(db, clock)
    try:
        store.put("a", b"1")
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count={pages}")
        revision = store.revision
        with pytest.raises(StorageFull) as info:
            store.put("b", b"x" * 200_000)
        assert info.value.http_status == 507 and info.value.exit_code == 11
        assert "no space left" in info.value.message and "free space" in info.value.message
        # nothing changed, reads go on
        assert store.revision == revision and store.get("b") is None
        assert store.get("a") is not None and store.get("a").value == b"1"  # type: ignore[union-attr]
        store._db.execute("PRAGMA max_page_count=1073741823")
        store.put("b", b"x" * 200_000)  # space is back: no reopen needed
        assert store.get("b") is not None
    finally:
        store.close()
    reopened = SqliteStore(db, clock)
    try:
        assert reopened.get("b") is not None
    finally:
        reopened.close()
