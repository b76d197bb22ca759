"""Group commit: concurrent writes share one SQLite transaction, each caller
is answered after it, a failing write fails alone, and a commit SQLite
refuses fails the whole group and changes nothing."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from cove.clock import ManualClock
from cove.errors import InvalidArgument, StoreError
from cove.store import MemoryStore, Put, SqliteStore
from cove.store.group import MAX_GROUP, GroupCommit


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "state.db")


async def _put_all(commits: GroupCommit, store: MemoryStore, keys: list[str]) -> list[object]:
    calls = [commits.call(store.put, key, key.encode()) for key in keys]
    return await asyncio.gather(*calls, return_exceptions=True)


def test_concurrent_writes_commit_as_one_group(db: str) -> None:
    store = SqliteStore(db, ManualClock())
    start = store.revision
    commits = GroupCommit(store)
    keys = [f"k{i}" for i in range(20)]

    revisions = asyncio.run(_put_all(commits, store, keys))

    # Each write has its own revision, in the order the callers queued them.
    assert revisions == list(range(start + 1, start + 21))
    # In as few groups as the group size allows.
    assert commits.groups == -(-20 // MAX_GROUP) and commits.calls == 20
    store.close()
    again = SqliteStore(db, ManualClock())
    assert [kv.key for kv in again.range("k").kvs] == sorted(keys)
    assert again.revision == start + 20
    again.close()


def test_a_failing_write_fails_alone() -> None:
    store = MemoryStore(ManualClock())
    commits = GroupCommit(store)

    results = asyncio.run(_put_all(commits, store, ["a", "", "b"]))

    assert isinstance(results[1], InvalidArgument)  # an empty key
    assert results[0] == 2 and results[2] == 3
    assert store.get("a") is not None and store.get("b") is not None
    store.close()


def test_a_refused_group_commit_fails_every_write_and_changes_nothing(db: str) -> None:
    store = SqliteStore(db, ManualClock())
    rev = store.put("a", b"1")
    watch = store.watch("")
    commits = GroupCommit(store)
    other = sqlite3.connect(db)
    other.execute("BEGIN EXCLUSIVE")  # another writer holds the file
    store._db.execute("PRAGMA busy_timeout = 50")
    try:

        async def writes() -> list[object]:
            calls = [
                commits.call(store.put, "a", b"2"),
                commits.call(store.txn, [], [Put("b", b"1"), Put("c", b"1")]),
            ]
            return await asyncio.gather(*calls, return_exceptions=True)

        results = asyncio.run(writes())
    finally:
        other.rollback()
        other.close()

    assert all(isinstance(r, StoreError) for r in results)
    assert store.revision == rev
    kv = store.get("a")
    assert kv is not None and kv.value == b"1"
    assert store.get("b") is None
    assert watch.next(timeout=0) == []
    assert store.put("a", b"3") == rev + 1  # works again once the file is free
    store.close()
    again = SqliteStore(db, ManualClock())
    assert [(kv.key, kv.value) for kv in again.range("").kvs] == [("a", b"3")]
    again.close()


def test_batch_writes_reach_the_file_together(db: str) -> None:
    store = SqliteStore(db, ManualClock())
    lease = store.lease_grant(30)
    with store.batch():
        store.put("x", b"1", lease=lease)
        store.put("y", b"1")
        store.delete("y")
        store.put("z", b"1")
        with store.batch():  # a nested block joins the outer group
            store.put("z", b"2")
    expected = store.range("")
    store.close()
    again = SqliteStore(db, ManualClock())
    assert again.range("") == expected
    assert [kv.key for kv in expected.kvs] == ["x", "z"]
    again.lease_revoke(lease)
    assert again.get("x") is None
    again.close()
