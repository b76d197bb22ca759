"""SQLite keeps the events since the last compaction and a snapshot folded
at each compaction: whatever mix of writes and compactions came before, a
reopened store holds exactly what the closed one did (keys, values,
create/mod revisions and versions, and the revision)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cove.clock import SystemClock
from cove.store.sqlite import SqliteStore


def _write_some(store: SqliteStore, rng: random.Random, n: int) -> None:
    for _ in range(n):
        if rng.random() < 0.3:
            with store.batch():
                for _ in range(rng.randint(1, 5)):
                    key = f"k{rng.randint(0, 30)}"
                    if rng.random() < 0.3:
                        store.delete(key)
                    else:
                        store.put(key, str(rng.random()).encode())
        else:
            key = f"k{rng.randint(0, 30)}"
            r = rng.random()
            if r < 0.2:
                store.delete(key)
            elif r < 0.25:
                store.delete("k1", prefix=True)
            else:
                store.put(key, str(rng.random()).encode())
        if rng.random() < 0.05:
            store.compact(store.revision)


@pytest.mark.parametrize("seed", range(12))
def test_reopen_after_random_writes_and_compactions_sees_the_same_store(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    path = str(tmp_path / "cove.db")
    history = rng.choice([1, 3, 10, 50])
    store = SqliteStore(path, SystemClock(), history=history)
    _write_some(store, rng, rng.randint(1, 300))
    want, revision = store.range(""), store.revision
    store.close()
    again = SqliteStore(path, SystemClock(), history=history)
    try:
        assert again.revision == revision
        assert again.range("").kvs == want.kvs
        # And it goes on from there: more writes, another reopen.
        _write_some(again, rng, 50)
        want, revision = again.range(""), again.revision
    finally:
        again.close()
    third = SqliteStore(path, SystemClock(), history=history)
    try:
        assert third.revision == revision and third.range("").kvs == want.kvs
    finally:
        third.close()
