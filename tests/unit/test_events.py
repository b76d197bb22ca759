"""The event stream's logic on a memory store: what a change is called, how
filters match, and that a reader resumes from an index without a gap, from
memory, from the store's history, or with a reset when both are gone."""

from __future__ import annotations

import json
import time

import pytest

from cove.clock import ManualClock
from cove.events.change import Action, Filter, Kind, change_of, changes_of
from cove.events.log import EventLog
from cove.store.base import Event, EventType, KeyValue
from cove.store.hub import WatchHub
from cove.store.memory import MemoryStore


def _put(key: str, value: object, create: int, mod: int) -> Event:
    raw = json.dumps(value).encode()
    return Event(EventType.PUT, KeyValue(key, raw, create, mod, 1 if create == mod else 2))


def test_a_check_going_critical_names_its_service_and_status() -> None:
    ev = _put("registry/chk/web/node1/service%3Aweb", {"Status": "critical"}, 5, 9)
    change = change_of(ev)
    assert change is not None
    assert (change.index, change.kind, change.action) == (9, Kind.CHECK, Action.UPDATE)
    assert change.name == "service:web"
    assert change.attrs["service"] == "web" and change.attrs["status"] == "critical"


def test_a_deleted_endpoint_is_described_by_what_it_was() -> None:
    prev = KeyValue(
        "endpoints/vnet/ep1",
        json.dumps({"container_name": "redis", "ipv4": "10.89.0.2"}).encode(),
        3,
        3,
        1,
    )
    ev = Event(EventType.DELETE, KeyValue("endpoints/vnet/ep1", b"", 0, 12, 0), prev)
    change = change_of(ev)
    assert change is not None
    assert (change.kind, change.action, change.name) == (Kind.ENDPOINT, Action.DELETE, "redis")
    assert change.attrs == {"network": "vnet", "ipv4": "10.89.0.2", "ipv6": ""}


def test_keys_the_stream_does_not_cover_give_no_change() -> None:
    evs = [_put("ipam/vnet/10.89.0.2", {}, 1, 1), _put("acl/tokens/x", {}, 2, 2)]
    assert changes_of(evs) == []


def test_filters_or_within_a_key_and_across_keys() -> None:
    f = Filter.parse(["type=check", "status=critical", "status=warning"])
    crit = change_of(_put("registry/chk/web/n/c", {"Status": "critical"}, 1, 1))
    ok = change_of(_put("registry/chk/web/n/c", {"Status": "passing"}, 1, 2))
    net = change_of(_put("networks/vnet", {}, 3, 3))
    assert crit is not None and ok is not None and net is not None
    assert f(crit) and not f(ok) and not f(net)


@pytest.mark.parametrize(
    ("term", "says"), [("type", "key=value"), ("type=bogus", "unknown event type")]
)
def test_bad_filters_say_what_is_wrong(term: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Filter.parse([term])


@pytest.fixture
def parts() -> tuple[MemoryStore, WatchHub]:
    store = MemoryStore(ManualClock(), history=50)
    hub = WatchHub(store)
    hub.start()
    yield store, hub  # type: ignore[misc]
    hub.stop()
    store.close()


def test_a_reader_resumes_from_the_index_it_last_saw(parts: tuple[MemoryStore, WatchHub]) -> None:
    store, hub = parts
    log = EventLog(store)
    log.start(hub)
    first = store.put("networks/a", b"{}")
    store.put("ipam/a/10.0.0.1", b"{}")  # not an event
    second = store.put("registry/kv/app/x", b"1")
    assert hub.wait_for(second, 5)
    seen = log.after(0)
    assert [(c.index, c.kind) for c in seen] == [(first, Kind.NETWORK), (second, Kind.KV)]
    assert [c.name for c in log.after(first)] == ["app/x"]
    assert log.after(second) == []
    assert log.head == second


def test_a_one_shot_reader_sees_a_write_already_acknowledged(
    parts: tuple[MemoryStore, WatchHub],
) -> None:
    store, hub = parts
    hub.subscribe("", lambda events: time.sleep(0.3))  # a slow reader ahead of the log
    log = EventLog(store)
    log.start(hub)
    put = store.put("registry/kv/after/restart", b"1")
    assert log.wait_current(5)
    assert [c.index for c in log.after(0)] == [put]


def test_a_reader_from_before_the_log_started_is_served_from_the_store(
    parts: tuple[MemoryStore, WatchHub],
) -> None:
    store, hub = parts
    early = store.put("containers/h1/redis", json.dumps({"desired": "running"}).encode())
    store.put("policy/rules/r1", json.dumps({"network": "vnet"}).encode())
    log = EventLog(store)  # an agent that restarted: its memory starts empty
    log.start(hub)
    late = store.put("networks/vnet", b"{}")
    assert hub.wait_for(late, 5)
    got = log.after(early - 1)
    assert [c.kind for c in got] == [Kind.CONTAINER, Kind.POLICY, Kind.NETWORK]
    assert got[0].attrs["desired"] == "running"
    assert [c.index for c in got] == sorted(c.index for c in got)


def test_a_reader_older_than_all_history_gets_a_reset(
    parts: tuple[MemoryStore, WatchHub],
) -> None:
    store, hub = parts
    for i in range(80):  # more than the store's history of 50
        store.put(f"registry/kv/k{i}", b"x")
    log = EventLog(store, capacity=10)
    log.start(hub)
    got = log.after(1)
    assert len(got) == 1 and got[0].kind is Kind.RESET
    assert got[0].index == store.revision


def test_the_memory_is_bounded_and_knows_what_it_lost(
    parts: tuple[MemoryStore, WatchHub],
) -> None:
    store, hub = parts
    log = EventLog(store, capacity=5)
    log.start(hub)
    start = store.revision
    revs = [store.put(f"registry/kv/k{i}", b"x") for i in range(12)]
    assert hub.wait_for(revs[-1], 5)
    assert [c.index for c in log.after(revs[-3])] == revs[-2:]
    # Further back than the memory: the store's history fills the gap.
    assert [c.index for c in log.after(start)] == revs


def test_changes_of_one_commit_under_several_prefixes_keep_their_order(
    parts: tuple[MemoryStore, WatchHub],
) -> None:
    store, hub = parts
    log = EventLog(store)
    log.start(hub)
    with store.batch():  # one commit, delivered to the hub as one batch
        first = store.put("containers/h1/a", b"{}")
        middle = store.put("networks/n", b"{}")
        last = store.put("containers/h2/b", b"{}")
    assert hub.wait_for(last, 5)
    assert [c.index for c in log.after(first - 1)] == [first, middle, last]
    assert [c.name for c in log.after(middle)] == ["b"]


def test_an_index_from_another_history_gets_a_reset(parts: tuple[MemoryStore, WatchHub]) -> None:
    store, hub = parts
    log = EventLog(store)
    log.start(hub)
    rev = store.put("networks/a", b"{}")
    assert hub.wait_for(rev, 5)
    got = log.after(rev + 1000)  # a client of a store that was wiped and began again
    assert [(c.kind, c.index) for c in got] == [(Kind.RESET, rev)]
    assert log.after(rev) == []


def test_a_straggler_from_another_stream_takes_its_place_in_the_log() -> None:
    # A hub of several watch streams delivers each stream in order but the
    # streams only almost in order: a change that arrives after a newer one
    # must still reach a reader that resumes from before it.
    store = MemoryStore(ManualClock())
    log = EventLog(store)

    def put(key: str, rev: int) -> Event:
        return Event(EventType.PUT, KeyValue(key, b"{}", rev, rev, 1))

    log._on_events([put("networks/a", 5), put("networks/c", 9)])
    log._on_events([put("networks/b", 7)])
    assert [c.index for c in log.after(0)] == [5, 7, 9]
    assert [c.name for c in log.after(5)] == ["b", "c"]
    assert log.head == 9
    store.close()
