"""The default store: one SQLite file, owned by one process (the agent).

``SqliteStore`` composes a ``MemoryStore`` (the mirror) with a journal on
the file (``_SqliteJournal``): reads, watches and lease bookkeeping run on
the in-memory mirror, and every write transaction of the store is first
committed as exactly one SQLite transaction (its event rows and the revision
together) before the mirror changes. A write that SQLite refuses raises
``StoreError`` and changes nothing. Like the memory store it is in-process,
so it offers the ``LocalStore`` abilities (``local()``).

The file is a log plus a snapshot: the ``events`` table holds every change
since the compaction point (each row carries the key's whole new state), and
the ``kv`` table the keys as they were just before it. A commit only appends
event rows, at the end of one B-tree; updating ``kv`` in place would dirty a
page per key at random spots of the tree, which was most of the bytes and
time of a commit. Compaction folds the events it drops into ``kv`` (each key
once, at its last state) in the same transaction; opening the file loads
``kv`` and replays ``events`` over it.

Group commit: inside ``with store.batch():`` the writes of many callers (the
Consul API queues those of concurrent requests, see ``cove.store.group``)
are committed as one SQLite transaction when the block ends; the block holds
the store lock, so no other thread sees them before that commit, and each
caller is answered only after it. If that commit fails, the mirror is re-read
from the file and every write of the group fails with ``StoreError``.

Durability: WAL journal with ``synchronous=NORMAL``. A commit is appended to
the WAL without an fsync, so a crash of the *process* (kill -9 at any moment)
loses nothing that was committed and never leaves a torn transaction; a crash
of the *machine* may lose the last few commits but still yields a consistent
database at an earlier revision.

History for watches from a past revision lives in the ``events`` table and is
compacted automatically to the last ``history`` revisions; lease deadlines are
stored in wall-clock time, so leases keep running across a restart and the
ones that ran out while the agent was down expire right after it opens.

Only one process may open the file: a second one gets ``StoreError`` (an
advisory ``flock`` on ``<path>.lock``, released by the kernel when the owner
dies).

A full disk: a write SQLite cannot commit raises ``StorageFull`` (naming the
disk) and changes nothing; reads, watches and leases already granted go on
from the mirror, and writes work again once space is freed. The file opens
on a full disk too, read-only in effect until space returns.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from cove.clock import Clock
from cove.errors import StoreError, storage_error
from cove.store.base import (
    Event,
    EventType,
    KeyValue,
    Listener,
)
from cove.store.memory import DEFAULT_HISTORY, MemoryStore, Snapshot
from cove.store.proxy import StoreProxy

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv (
    key        TEXT PRIMARY KEY,
    value      BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev    INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    lease      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    revision     INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    type         TEXT NOT NULL,
    key          TEXT NOT NULL,
    value        BLOB NOT NULL,
    create_rev   INTEGER NOT NULL,
    version      INTEGER NOT NULL,
    lease        INTEGER NOT NULL,
    prev_value   BLOB,
    prev_create  INTEGER,
    prev_mod     INTEGER,
    prev_version INTEGER,
    prev_lease   INTEGER,
    PRIMARY KEY (revision, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    id       INTEGER PRIMARY KEY,
    ttl      INTEGER NOT NULL,
    deadline REAL NOT NULL
);
"""

_PUT_KV = "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?, ?)"
_DEL_KV = "DELETE FROM kv WHERE key = ?"
_ADD_EVENT = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_SET_META = "INSERT OR REPLACE INTO meta VALUES (?, ?)"
# Folding, in SQLite's C rather than row by row in Python: the last event of
# each key before the compaction point, then a delete or a put per key.
_FOLD_LAST = """
CREATE TEMP TABLE fold AS SELECT key, type, value, create_rev, revision, version, lease
FROM (SELECT *, row_number() OVER (PARTITION BY key ORDER BY revision DESC, seq DESC) AS n
      FROM events WHERE revision < ?)
WHERE n = 1
"""
_FOLD_DELETES = "DELETE FROM kv WHERE key IN (SELECT key FROM temp.fold WHERE type != 'put')"
_FOLD_PUTS = (
    "INSERT OR REPLACE INTO kv SELECT key, value, create_rev, revision, version, lease"
    " FROM temp.fold WHERE type = 'put'"
)


class SqliteStore(StoreProxy):
    """The Store protocol on one SQLite file (see the module docstring).
    Raises ``StoreError`` (``StorageFull`` on a full disk) when the file
    cannot be opened or read, or another process holds it."""

    def __init__(self, path: str, clock: Clock, *, history: int = DEFAULT_HISTORY) -> None:
        self._file = _SqliteJournal(path)
        try:
            self._mirror = MemoryStore(clock, history=history, journal=self._file)
        except BaseException:
            self._file.close()
            raise
        super().__init__(self._mirror)  # closing the mirror closes the journal too
        self._file.start_checkpoints()

    @property
    def _db(self) -> sqlite3.Connection:
        """The file's connection (for tests that provoke SQLite errors)."""
        return self._file.db

    # -- the Store protocol: ``StoreProxy``'s, on the mirror ---------------------

    def expire_leases(self) -> int:
        """End every lease whose deadline has passed; returns how many."""
        return self._mirror.expire_leases()

    # -- the LocalStore capability -------------------------------------------

    def local(self) -> SqliteStore:
        """In process (the mirror): every ``LocalStore`` ability."""
        return self

    def exclusive(self) -> AbstractContextManager[Callable[[str], KeyValue | None]]:
        return self._mirror.exclusive()

    def batch(self) -> AbstractContextManager[None]:
        return self._mirror.batch()

    def listen(self, listener: Listener) -> int:
        return self._mirror.listen(listener)

    def unlisten(self, listener: Listener) -> None:
        self._mirror.unlisten(listener)


class _SqliteJournal:
    """The file under a ``SqliteStore``'s mirror: the ``Journal`` that makes
    its changes durable and restores them on opening."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._group: _Pending | None = None  # writes held back by batch()
        self._lock_fd = self._take_file_lock(path)
        self._checkpoint_stop = threading.Event()
        self._checkpointer: threading.Thread | None = None
        try:
            # The state may hold tokens and KV secrets: owner-only from birth.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            try:
                self.db = self._connect(exclusive=False)
            except sqlite3.Error as exc:
                if not _disk_full(exc, path):
                    raise
                # The shared WAL index cannot be created on a full disk; in
                # exclusive mode SQLite keeps it in memory (no checkpoint
                # thread then, the connection checkpoints by itself).
                self.db = self._connect(exclusive=True)
            if self._exclusive or _no_space(path):
                log.warning(
                    "no space left on the disk holding %s: the store is read-only until space"
                    " is freed (writes are refused with 507)",
                    os.path.dirname(os.path.abspath(path)),
                )
        except (sqlite3.Error, OSError) as exc:
            os.close(self._lock_fd)
            if isinstance(exc, sqlite3.Error) and _disk_full(exc, path):
                raise self._write_error(exc) from exc
            raise StoreError(
                f"cannot open the SQLite store {path}: {exc}", path=path, error=exc
            ) from exc

    def start_checkpoints(self) -> None:
        if not self._exclusive and self._checkpointer is None:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, name="cove-sqlite-checkpoint", daemon=True
            )
            self._checkpointer.start()

    def _connect(self, *, exclusive: bool) -> sqlite3.Connection:
        self._exclusive = exclusive
        db = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, cached_statements=64
        )
        try:
            if exclusive:
                db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints copy the WAL back into the database and fsync; done
            # inside a commit they cost a few hundred microseconds on the
            # writer's path. A background thread does them instead.
            db.execute(f"PRAGMA wal_autocheckpoint={1000 if exclusive else 0}")
            db.executescript(_SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _checkpoint_loop(self, interval: float = 1.0) -> None:
        """Copy the WAL into the database once a second, off the commit
        path, on a connection of its own (a PASSIVE checkpoint never blocks
        the writer)."""
        try:
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error:
            log.exception("cannot open a checkpoint connection to %s", self._path)
            return
        failing = False
        try:
            while not self._checkpoint_stop.wait(interval):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    # Once per outage: a full disk fails every second.
                    if not failing:
                        log.warning("WAL checkpoint of %s failed: %s", self._path, exc)
                    failing = True
                else:
                    if failing:
                        log.info("WAL checkpoints of %s work again", self._path)
                    failing = False
        finally:
            db.close()

    @staticmethod
    def _take_file_lock(path: str) -> int:
        try:
            fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError("cannot create the store's lock file", path=path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StoreError("the store is in use by another process", path=path) from exc
        return fd

    def restore(self) -> Snapshot:
        try:
            return self._read()
        except sqlite3.Error as exc:
            if _disk_full(exc, self._path):
                raise self._write_error(exc) from exc
            raise StoreError(
                f"cannot read the SQLite store {self._path}: {exc}", path=self._path, error=exc
            ) from exc

    def _read(self) -> Snapshot:
        meta = dict(self.db.execute("SELECT name, value FROM meta").fetchall())
        revision = int(meta.get("revision", 1))
        compacted = int(meta.get("compacted", 1))
        kvs = {row[0]: KeyValue(*row) for row in self.db.execute("SELECT * FROM kv")}
        history = [
            _event_from_row(row)
            for row in self.db.execute("SELECT * FROM events ORDER BY revision, seq")
        ]
        for ev in history:  # the log after the snapshot in ``kv``
            if ev.type is EventType.PUT:
                kvs[ev.kv.key] = ev.kv
            else:
                kvs.pop(ev.kv.key, None)
        history = [ev for ev in history if ev.kv.mod_revision >= compacted]
        leases = [
            (int(i), int(ttl), float(deadline))
            for i, ttl, deadline in self.db.execute("SELECT id, ttl, deadline FROM leases")
        ]
        log.debug("read %s at revision %s with %s keys", self._path, revision, len(kvs))
        return Snapshot(kvs.values(), history, revision, compacted, leases)

    # -- the Journal (called with the store lock held) ----------------------
    #
    # Each hook records its writes in a ``_Pending``; outside a group it is
    # committed at once, inside ``batch()`` the whole group's writes are
    # committed together when the group ends.

    def _pending_writes(self) -> _Pending:
        return self._group if self._group is not None else _Pending()

    def _flush(self, pending: _Pending) -> None:
        if pending is not self._group:
            self._transaction(pending.write)

    def events(self, revision: int, events: Sequence[Event]) -> None:
        pending = self._pending_writes()
        pending.add_events(revision, events)
        self._flush(pending)

    def compact(self, revision: int) -> None:
        pending = self._pending_writes()
        pending.compacted = revision
        self._flush(pending)

    def lease(self, lease: int, ttl: int, deadline: float) -> None:
        pending = self._pending_writes()
        pending.leases[lease] = (ttl, deadline)
        self._flush(pending)

    def lease_end(self, lease: int) -> None:
        pending = self._pending_writes()
        pending.leases[lease] = None
        self._flush(pending)

    def group_begin(self) -> None:
        self._group = _Pending()

    def group_end(self) -> None:
        group, self._group = self._group, None
        if group is None or group.empty:
            return
        self._transaction(group.write)  # on failure the mirror re-reads restore()

    def close(self) -> None:
        self._checkpoint_stop.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=5)
        try:
            self.db.close()
        except sqlite3.Error:
            log.exception("closing %s failed", self._path)
        finally:
            os.close(self._lock_fd)

    def _transaction(self, write: Callable[[sqlite3.Connection], object]) -> None:
        """Run ``write(db)`` as one SQLite transaction; all or nothing."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                write(self.db)
                self.db.execute("COMMIT")
            except BaseException:
                # SQLite has rolled back already on some errors (a full
                # disk): the original error is the one to report.
                if self.db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._write_error(exc) from exc

    def _write_error(self, exc: sqlite3.Error) -> StoreError:
        if _disk_full(exc, self._path):
            return storage_error(
                OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                os.path.dirname(os.path.abspath(self._path)),
                "the store cannot save the change",
            )
        return StoreError("SQLite write failed", path=self._path, error=exc)


class _Pending:
    """Writes waiting for one SQLite transaction: the event rows in order,
    the last state of every lease written, the newest revision and the
    newest compaction point."""

    __slots__ = ("compacted", "events", "leases", "revision")

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.leases: dict[int, tuple[int, float] | None] = {}
        self.revision = 0
        self.compacted = 0

    @property
    def empty(self) -> bool:
        return not (self.events or self.leases or self.revision or self.compacted)

    def add_events(self, revision: int, events: Sequence[Event]) -> None:
        rows = self.events
        for seq, ev in enumerate(events):
            kv, prev = ev.kv, ev.prev
            rows.append(
                (
                    revision,
                    seq,
                    str(ev.type),  # a StrEnum: its value, faster than .value
                    kv.key,
                    kv.value,
                    kv.create_revision,
                    kv.version,
                    kv.lease,
                    prev.value if prev else None,
                    prev.create_revision if prev else None,
                    prev.mod_revision if prev else None,
                    prev.version if prev else None,
                    prev.lease if prev else None,
                )
            )
        self.revision = revision

    def write(self, db: sqlite3.Connection) -> None:
        if self.events:
            db.executemany(_ADD_EVENT, self.events)
        if self.revision:
            db.execute(_SET_META, ("revision", self.revision))
        if self.compacted:
            # After the inserts: the group may compact its own early events.
            _fold(db, self.compacted)
            db.execute("DELETE FROM events WHERE revision < ?", (self.compacted,))
            db.execute(_SET_META, ("compacted", self.compacted))
        for lease, state in self.leases.items():
            if state is None:
                db.execute("DELETE FROM leases WHERE id = ?", (lease,))
            else:
                db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (lease, *state))


def _disk_full(exc: sqlite3.Error, path: str) -> bool:
    """SQLite says SQLITE_FULL when the disk is full, but some writes (the
    WAL index, a journal) fail as a plain I/O error: then the disk decides."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_FULL:
        return True
    return code == sqlite3.SQLITE_IOERR and _no_space(path)


def _no_space(path: str) -> bool:
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    # root may also write the blocks a file system reserves for it
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) == 0


def _fold(db: sqlite3.Connection, before: int) -> None:
    """Bring the ``kv`` snapshot up to revision ``before - 1``: write each
    key changed by the events before ``before`` once, at its last state."""
    db.execute(_FOLD_LAST, (before,))
    try:
        db.execute(_FOLD_DELETES)
        db.execute(_FOLD_PUTS)
    finally:
        db.execute("DROP TABLE temp.fold")


def _event_from_row(row: tuple[Any, ...]) -> Event:
    (revision, _seq, kind, key, value, create, version, lease) = row[:8]
    prev_value, prev_create, prev_mod, prev_version, prev_lease = row[8:]
    prev = None
    if prev_value is not None:
        prev = KeyValue(key, prev_value, prev_create, prev_mod, prev_version, prev_lease)
    kv = KeyValue(key, value, create, revision, version, lease)
    return Event(EventType(kind), kv, prev)
