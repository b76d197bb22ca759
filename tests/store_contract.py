"""The Store contract: one suite that every backend must pass.

A backend's test module subclasses ``StoreContract`` and provides a
``backend`` fixture yielding a ``Backend``: the store under test and a way to
let lease time pass (a manual clock for memory/SQLite, real sleeping for etcd).

The suite also checks what a backend says of its ``LocalStore`` abilities
(``local_store``): an in-process backend must offer them and honour them (an
exclusive transaction, group commit, commit listeners); a networked one must
answer ``None``, so callers take the compare-and-swap and watch paths.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

from cove.errors import InvalidArgument, NotFound, StoreError, WatchCompacted
from cove.store.base import (
    UNBOUNDED,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    Event,
    EventType,
    Get,
    Put,
    Store,
    Watch,
    local_store,
)


@dataclass
class Backend:
    store: Store
    pass_time: Callable[[float], None]
    """Let at least this many seconds of lease time pass, and give the store
    the chance to expire leases."""
    name: str = ""
    local: bool = True
    """Whether the backend answers in-process, offering ``LocalStore``."""


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def drain(watch: Watch, count: int, timeout: float = 10.0) -> list[Event]:
    """Read until ``count`` events arrived (fails on timeout)."""
    got: list[Event] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(got)} of {count} events arrived"
        got.extend(watch.next(timeout=min(left, 1.0)))
    return got


def summary(events: list[Event]) -> list[tuple[str, str, int]]:
    return [(e.type.value, e.kv.key, e.revision) for e in events]


class StoreContract:
    """The tests; ``k`` prefixes keys so runs on a shared etcd never meet."""

    @pytest.fixture
    def k(self, request: pytest.FixtureRequest) -> str:
        return f"t/{request.node.name}/{time.monotonic_ns()}/"

    # -- revisions -------------------------------------------------------

    def test_revision_grows_by_one_per_write_only(self, backend: Backend, k: str) -> None:
        s = backend.store
        r0 = s.revision
        assert r0 >= 1
        assert s.put(k + "a", b"1") == r0 + 1
        assert s.revision == r0 + 1
        s.get(k + "a")
        s.range(k)
        assert s.delete(k + "missing") == r0 + 1
        assert s.delete(k + "nothing/", prefix=True) == r0 + 1
        result = s.txn([Compare.absent(k + "a")], [Put(k + "b", b"x")], [Get(k + "a")])
        assert not result.succeeded
        assert result.revision == r0 + 1
        assert s.revision == r0 + 1
        result = s.txn([], [Put(k + "b", b"1"), Put(k + "c", b"2"), Delete(k + "a")])
        assert result.revision == r0 + 2
        assert s.range(k).revision == r0 + 2
        assert s.delete(k, prefix=True) == r0 + 3

    def test_create_mod_revision_and_version(self, backend: Backend, k: str) -> None:
        s = backend.store
        r1 = s.put(k + "a", b"1")
        r2 = s.put(k + "a", b"2")
        kv = s.get(k + "a")
        assert kv is not None
        assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"2", r1, r2, 2)
        s.delete(k + "a")
        assert s.get(k + "a") is None
        r4 = s.put(k + "a", b"3")
        kv = s.get(k + "a")
        assert kv is not None
        assert (kv.create_revision, kv.mod_revision, kv.version) == (r4, r4, 1)

    def test_range_by_prefix_sorted(self, backend: Backend, k: str) -> None:
        s = backend.store
        for name in ["b/2", "a", "b/10", "b/1", "c", "b"]:
            s.put(k + name, name.encode())
        s.put(k[:-1] + "0", b"outside")  # shares the prefix without the slash
        got = s.range(k + "b/")
        assert [kv.key for kv in got.kvs] == [k + "b/1", k + "b/10", k + "b/2"]
        assert got.revision == s.revision
        assert [kv.value for kv in s.range(k).kvs] == [b"a", b"b", b"b/1", b"b/10", b"b/2", b"c"]
        assert s.range(k + "zzz").kvs == ()

    def test_keys_are_a_range_without_values(self, backend: Backend, k: str) -> None:
        s = backend.store
        s.put(k + "a", b"1")
        s.put(k + "b", b"22")
        s.put(k + "a", b"333")
        full, keys = s.range(k), s.keys(k)
        assert [kv.key for kv in keys.kvs] == [k + "a", k + "b"]
        assert all(kv.value == b"" for kv in keys.kvs)
        assert [(kv.mod_revision, kv.version) for kv in keys.kvs] == [
            (kv.mod_revision, kv.version) for kv in full.kvs
        ]
        assert keys.revision == s.revision

    def test_range_keys_and_watch_between_two_keys(self, backend: Backend, k: str) -> None:
        s = backend.store
        for name in ["a", "b/1", "b/2", "c", "d"]:
            s.put(k + name, name.encode())
        got = s.range(k + "b/", end=k + "c")
        assert [kv.value for kv in got.kvs] == [b"b/1", b"b/2"]
        assert got.revision == s.revision
        assert [kv.key for kv in s.keys(k + "c", end=k + "d").kvs] == [k + "c"]
        tail = [kv.key for kv in s.range(k + "c", end=UNBOUNDED).kvs]
        assert tail[:2] == [k + "c", k + "d"] and all(key >= k + "c" for key in tail)
        between = s.watch(k + "b", end=k + "d")
        r1 = s.put(k + "a", b"outside, below")
        r2 = s.put(k + "b/3", b"inside")
        r3 = s.put(k + "d", b"outside: the end is excluded")
        r4 = s.delete(k + "c")
        assert r1 < r2 < r3 < r4
        assert summary(drain(between, 2)) == [("put", k + "b/3", r2), ("delete", k + "c", r4)]
        assert between.next(timeout=0.2) == []
        between.close()

    def test_delete_prefix_reports_previous_values(self, backend: Backend, k: str) -> None:
        s = backend.store
        s.put(k + "x/1", b"one")
        s.put(k + "x/2", b"two")
        s.put(k + "y", b"keep")
        w = s.watch(k)
        rev = s.delete(k + "x/", prefix=True)
        events = drain(w, 2)
        w.close()
        assert summary(events) == [("delete", k + "x/1", rev), ("delete", k + "x/2", rev)]
        assert [e.prev.value if e.prev else None for e in events] == [b"one", b"two"]
        assert all(e.kv.value == b"" for e in events)
        assert [kv.key for kv in s.range(k).kvs] == [k + "y"]

    # -- transactions ----------------------------------------------------

    def test_txn_compares_choose_the_branch(self, backend: Backend, k: str) -> None:
        s = backend.store
        r1 = s.put(k + "a", b"m")
        s.put(k + "a", b"n")  # version 2
        cases: list[tuple[Compare, bool]] = [
            (Compare.value_is(k + "a", b"n"), True),
            (Compare.value_is(k + "a", b"m"), False),
            (Compare(k + "a", CompareTarget.VALUE, CompareOp.GREATER, b"m"), True),
            (Compare(k + "a", CompareTarget.VALUE, CompareOp.LESS, b"m"), False),
            (Compare(k + "a", CompareTarget.VALUE, CompareOp.NOT_EQUAL, b"m"), True),
            (Compare(k + "a", CompareTarget.VERSION, CompareOp.EQUAL, 2), True),
            (Compare(k + "a", CompareTarget.VERSION, CompareOp.LESS, 2), False),
            (Compare(k + "a", CompareTarget.CREATE, CompareOp.EQUAL, r1), True),
            (Compare(k + "a", CompareTarget.MOD, CompareOp.GREATER, r1), True),
            (Compare.mod_is(k + "a", r1), False),
            (Compare.present(k + "a"), True),
            (Compare.absent(k + "a"), False),
            (Compare.absent(k + "none"), True),
            (Compare(k + "none", CompareTarget.MOD, CompareOp.EQUAL, 0), True),
            (Compare(k + "none", CompareTarget.CREATE, CompareOp.LESS, 1), True),
        ]
        for compare, expected in cases:
            result = s.txn([compare], [Get(k + "a")], [])
            assert result.succeeded is expected, compare
            assert result.responses == (((s.get(k + "a"),),) if expected else ())

    def test_value_compare_on_a_missing_key(self, backend: Backend, k: str) -> None:
        s = backend.store
        empty = Compare.value_is(k + "none", b"")
        other = Compare(k + "none", CompareTarget.VALUE, CompareOp.NOT_EQUAL, b"x")
        # Memory and SQLite follow base.Compare (a missing key has an empty
        # value); etcd never lets a value compare on a missing key hold.
        holds = backend.name != "etcd"
        assert s.txn([empty], []).succeeded is holds
        assert s.txn([other], []).succeeded is holds
        assert not s.txn([Compare.value_is(k + "none", b"x")], []).succeeded

    def test_txn_branches_and_get_responses(self, backend: Backend, k: str) -> None:
        s = backend.store
        s.put(k + "lock", b"owner-1")
        ok = s.txn(
            [Compare.value_is(k + "lock", b"owner-1"), Compare.absent(k + "data")],
            [Put(k + "data", b"d"), Get(k + "", prefix=True), Delete(k + "lock"), Get(k + "lock")],
            [Put(k + "failed", b"1")],
        )
        assert ok.succeeded
        assert len(ok.responses) == 4
        assert ok.responses[0] == ()
        assert [kv.key for kv in ok.responses[1]] == [k + "data", k + "lock"]
        assert ok.responses[1][0].mod_revision == ok.revision
        assert ok.responses[2] == ()
        assert ok.responses[3] == ()
        assert s.get(k + "lock") is None
        assert s.get(k + "failed") is None
        bad = s.txn(
            [Compare.absent(k + "data")],
            [Put(k + "data", b"again")],
            [Get(k + "data"), Put(k + "failed", b"1")],
        )
        assert not bad.succeeded
        assert bad.revision == ok.revision + 1
        assert [kv.value for kv in bad.responses[0]] == [b"d"]
        assert s.get(k + "data") is not None and s.get(k + "data").value == b"d"  # type: ignore[union-attr]

    def test_txn_is_all_or_nothing(self, backend: Backend, k: str) -> None:
        s = backend.store
        before = s.revision
        with pytest.raises(NotFound):
            s.txn([], [Put(k + "a", b"1"), Put(k + "b", b"2", lease=123456789)])
        with pytest.raises(InvalidArgument):
            s.txn([], [Put(k + "a", b"1"), Put(k + "a", b"2")])
        assert s.get(k + "a") is None
        assert s.revision == before

    def test_concurrent_cas_has_one_winner_per_round(self, backend: Backend, k: str) -> None:
        s = backend.store
        key = k + "counter"
        s.put(key, b"0")
        wins: list[int] = []
        lock = threading.Lock()
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                for _ in range(40):
                    kv = s.get(key)
                    assert kv is not None
                    n = int(kv.value)
                    result = s.txn(
                        [Compare.mod_is(key, kv.mod_revision)], [Put(key, str(n + 1).encode())]
                    )
                    if result.succeeded:
                        with lock:
                            wins.append(n + 1)
            except BaseException as exc:  # surfaced by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        final = s.get(key)
        assert final is not None
        assert sorted(wins) == list(range(1, int(final.value) + 1))  # no lost update
        assert len(wins) >= 40

    # -- watches ---------------------------------------------------------

    def test_watch_sees_every_event_once_in_order(self, backend: Backend, k: str) -> None:
        s = backend.store
        start = s.revision + 1
        live = s.watch(k)
        expected: list[tuple[str, str, int]] = []
        halfway = threading.Event()

        def writer() -> None:
            last_put = ""
            for i in range(60):
                if i == 30:
                    halfway.set()
                if i % 10 == 9:
                    r = s.txn([], [Put(k + f"m{i}a", b"1"), Put(k + f"m{i}b", b"2")]).revision
                    expected.extend([("put", k + f"m{i}a", r), ("put", k + f"m{i}b", r)])
                elif i % 7 == 6 and last_put:
                    r = s.delete(last_put)
                    expected.append(("delete", last_put, r))
                    last_put = ""
                else:
                    last_put = k + f"k{i}"
                    r = s.put(last_put, str(i).encode())
                    expected.append(("put", last_put, r))
                s.put("other/" + k + str(i), b"noise")

        t = threading.Thread(target=writer)
        t.start()
        # A watch from the past opened while writes go on must replay the
        # history and then follow live writes without a seam.
        assert halfway.wait(30)
        past = s.watch(k, start)
        total = 66  # 54 single writes + 6 transactions of two puts
        got_live = summary(drain(live, total))  # read while the writer runs
        got_past = summary(drain(past, total))
        t.join(60)
        assert len(expected) == total
        assert got_live == expected
        assert got_past == expected
        assert live.next(timeout=0.2) == []
        live.close()
        past.close()
        with pytest.raises(StoreError):
            live.next(timeout=0.1)

    def test_watch_event_carries_values_and_prev(self, backend: Backend, k: str) -> None:
        s = backend.store
        r1 = s.put(k + "a", b"1")
        w = s.watch(k, r1)
        r2 = s.put(k + "a", b"2")
        events = drain(w, 2)
        w.close()
        assert [e.type for e in events] == [EventType.PUT, EventType.PUT]
        assert events[0].kv.value == b"1" and events[0].prev is None
        assert events[1].kv.value == b"2" and events[1].kv.mod_revision == r2
        assert events[1].prev is not None and events[1].prev.value == b"1"
        assert events[1].kv.version == 2

    def test_watch_of_compacted_revision_raises(self, backend: Backend, k: str) -> None:
        s = backend.store
        r1 = s.put(k + "a", b"1")
        s.put(k + "a", b"2")
        r3 = s.put(k + "a", b"3")
        s.compact(r3)
        with pytest.raises(WatchCompacted):
            s.watch(k, r1).next(timeout=2)
        w = s.watch(k, r3)  # the compaction revision itself is kept
        assert [e.kv.value for e in drain(w, 1)] == [b"3"]
        w.close()

    # -- leases ----------------------------------------------------------

    def test_lease_expiry_deletes_keys(self, backend: Backend, k: str) -> None:
        s = backend.store
        lease = s.lease_grant(2)
        assert lease > 0
        s.put(k + "a", b"1", lease=lease)
        s.put(k + "b", b"2", lease=lease)
        s.put(k + "c", b"3")
        kv = s.get(k + "a")
        assert kv is not None and kv.lease == lease
        w = s.watch(k)
        backend.pass_time(3.5)
        eventually(lambda: s.get(k + "a") is None and s.get(k + "b") is None)
        events = drain(w, 2)
        w.close()
        assert {(e.type, e.kv.key) for e in events} == {
            (EventType.DELETE, k + "a"),
            (EventType.DELETE, k + "b"),
        }
        assert s.get(k + "c") is not None
        with pytest.raises(NotFound):
            s.lease_keepalive(lease)
        with pytest.raises(NotFound):
            s.put(k + "d", b"4", lease=lease)

    def test_keepalive_renews_and_revoke_deletes(self, backend: Backend, k: str) -> None:
        s = backend.store
        lease = s.lease_grant(3)
        s.put(k + "a", b"1", lease=lease)
        s.put(k + "moved", b"1", lease=lease)
        s.put(k + "moved", b"2")  # re-put without the lease detaches the key
        for _ in range(3):
            backend.pass_time(1.5)
            assert s.lease_keepalive(lease) >= 3
        assert s.get(k + "a") is not None
        before = s.revision
        s.lease_revoke(lease)
        assert s.get(k + "a") is None
        assert s.get(k + "moved") is not None
        assert s.revision == before + 1
        s.lease_revoke(lease)  # unknown leases are ignored
        with pytest.raises(NotFound):
            s.lease_keepalive(lease)

    def test_unknown_lease_is_not_found(self, backend: Backend, k: str) -> None:
        s = backend.store
        with pytest.raises(NotFound):
            s.put(k + "a", b"1", lease=987654321)
        with pytest.raises(NotFound):
            s.lease_keepalive(987654321)
        assert s.get(k + "a") is None

    # -- the LocalStore capability -----------------------------------------

    def test_local_capability_matches_the_backend(self, backend: Backend) -> None:
        local = local_store(backend.store)
        assert (local is not None) == backend.local
        if local is not None:
            assert local.revision == backend.store.revision

    def test_exclusive_block_reads_and_writes_without_compares(
        self, backend: Backend, k: str
    ) -> None:
        local = local_store(backend.store)
        if local is None:
            pytest.skip("not an in-process backend")
        local.put(k + "a", b"1")
        with local.exclusive() as lookup:
            kv = lookup(k + "a")
            assert kv is not None and kv.value == b"1"
            assert lookup(k + "missing") is None
            rev = local.txn((), [Put(k + "a", b"2")]).revision  # reentrant
            with local.exclusive() as inner:
                kv = inner(k + "a")
                assert kv is not None and kv.mod_revision == rev

    def test_batch_commits_once_and_listeners_hear_it_once(self, backend: Backend, k: str) -> None:
        local = local_store(backend.store)
        if local is None:
            pytest.skip("not an in-process backend")
        heard: list[list[tuple[str, str, int]] | None] = []

        def listener(events: Sequence[Event] | None) -> None:
            heard.append(None if events is None else summary(list(events)))

        start = local.listen(listener)
        try:
            assert start == local.revision
            watch = local.watch(k)
            with local.batch():
                r1 = local.put(k + "a", b"1")
                r2 = local.put(k + "b", b"2")
                assert (r1, r2) == (start + 1, start + 2)  # a revision each
                assert heard == []  # nothing heard before the group ends
            assert heard == [[("put", k + "a", r1), ("put", k + "b", r2)]]
            assert summary(drain(watch, 2)) == [("put", k + "a", r1), ("put", k + "b", r2)]
            r3 = local.delete(k + "a")
            assert heard[-1] == [("delete", k + "a", r3)]
            watch.close()
        finally:
            local.unlisten(listener)
        local.put(k + "c", b"3")
        assert len(heard) == 2  # not after unlisten
