"""The intent log of runs, and the error a full disk turns into."""

from __future__ import annotations

import errno
from pathlib import Path

from cove.errors import StorageFull, StoreError, storage_error
from cove.runtime.intents import Intent, IntentLog, Phase


def test_intents_survive_a_new_log_and_go_when_done(tmp_path: Path) -> None:
    log = IntentLog(tmp_path / "intents")
    assert list(log.all()) == []
    log.record(Intent("a" * 64, "web", ("vnet", "back")))
    log.record(Intent("b" * 64, "db", ("vnet",), Phase.ABORT))
    again = IntentLog(tmp_path / "intents")  # as a restarted agent sees them
    assert sorted(again.all(), key=lambda i: i.name) == [
        Intent("b" * 64, "db", ("vnet",), Phase.ABORT),
        Intent("a" * 64, "web", ("vnet", "back")),
    ]
    again.done("a" * 64)
    again.done("a" * 64)  # twice is fine: a restart may finish what a run finished
    assert [i.name for i in again.all()] == ["db"]


def test_half_written_and_unreadable_intents_are_dropped(tmp_path: Path) -> None:
    folder = tmp_path / "intents"
    log = IntentLog(folder)
    log.record(Intent("c" * 64, "ok", ()))
    (folder / ("d" * 64 + ".json")).write_text("{not json")
    (folder / ("e" * 64 + ".json.tmp")).write_text("{")
    assert [i.name for i in log.all()] == ["ok"]
    log.drop_partial()
    assert sorted(p.name for p in folder.iterdir()) == ["c" * 64 + ".json"]


def test_a_full_disk_is_storage_full_and_other_failures_are_store_errors() -> None:
    full = storage_error(OSError(errno.ENOSPC, "No space left on device"), "/var/lib/cove", "x")
    assert isinstance(full, StorageFull)
    assert (full.http_status, full.exit_code, full.kind) == (507, 11, "storage_full")
    assert "/var/lib/cove" in full.message and "free space" in full.message
    other = storage_error(OSError(errno.EACCES, "Permission denied"), "/var/lib/cove", "x")
    assert type(other) is StoreError and "Permission denied" in other.message
