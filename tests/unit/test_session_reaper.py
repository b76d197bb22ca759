"""The session reaper ends sessions from what the watch delivered: on time
for its own node, after a grace for others, at once when a check a session
names goes critical; and it reads nothing while nothing is due."""

from __future__ import annotations

from cove.clock import ManualClock
from cove.registry import Registry
from cove.registry.decode import service_from_json
from cove.registry.sessions import SessionReaper
from cove.registry.types import Status, session_key
from cove.store import MemoryStore, WatchHub


def _setup() -> tuple[ManualClock, MemoryStore, Registry, SessionReaper, WatchHub]:
    clock = ManualClock()
    store = MemoryStore(clock)
    reg = Registry(store, clock, "n1")
    reg.catalog.ensure_node()
    reaper = SessionReaper(reg.sessions, clock, "n1", grace=5.0)
    hub = WatchHub(store)
    for prefix in ("registry/sessions/", "registry/chk/", "registry/nodechk/", "registry/agent/"):
        hub.subscribe(prefix, reaper.apply)
    hub.start()
    reaper.load(store.range("registry/sessions/").kvs)
    return clock, store, reg, reaper, hub


def _settled(hub: WatchHub, store: MemoryStore) -> None:
    assert hub.wait_for(store.revision, timeout=5)


def test_a_session_ends_when_its_ttl_runs_out_not_before() -> None:
    clock, store, reg, reaper, hub = _setup()
    try:
        sid = reg.sessions.create({"TTL": "10s"})
        _settled(hub, store)
        clock.advance(19)  # Consul allows twice the TTL
        assert not reaper.pending(clock.time())
        assert reaper.reap() == 0 and store.get(session_key(sid)) is not None
        reg.sessions.renew(sid)  # the deadline moves: 20 s from now
        _settled(hub, store)
        clock.advance(2)
        assert not reaper.pending(clock.time())
        clock.advance(19)
        assert reaper.pending(clock.time())
        assert reaper.reap() == 1 and store.get(session_key(sid)) is None
        _settled(hub, store)
        assert not reaper.pending(clock.time())
    finally:
        hub.stop()


def test_another_nodes_session_is_left_to_its_agent_for_the_grace() -> None:
    clock, store, reg, reaper, hub = _setup()
    try:
        other = SessionReaper(reg.sessions, clock, "n2", grace=5.0)
        hub.subscribe("registry/sessions/", other.apply)
        sid = reg.sessions.create({"TTL": "10s"})  # on n1
        _settled(hub, store)
        clock.advance(21)
        assert other.pending(clock.time()) is False  # n1's agent goes first
        clock.advance(5)
        assert other.pending(clock.time())
        assert other.reap() == 1 and store.get(session_key(sid)) is None
    finally:
        hub.stop()


def test_a_session_ends_when_a_check_it_names_goes_critical() -> None:
    clock, store, reg, reaper, hub = _setup()
    try:
        inst, checks = service_from_json(
            {"Name": "web", "ID": "web-1", "Check": {"CheckID": "c1", "TTL": "30s"}}, "n1"
        )
        reg.catalog.register_service(inst, checks)
        reg.catalog.update_check("c1", Status.PASSING, "ok")
        _settled(hub, store)
        sid = reg.sessions.create({"ServiceChecks": [{"ID": "c1"}]})
        unrelated = reg.sessions.create({})
        _settled(hub, store)
        assert not reaper.pending(clock.time())
        reg.catalog.update_check("c1", Status.WARNING, "meh")  # not critical: stays
        _settled(hub, store)
        assert not reaper.pending(clock.time())
        reg.catalog.update_check("c1", Status.CRITICAL, "down")
        _settled(hub, store)
        assert reaper.pending(clock.time())
        assert reaper.reap() == 1
        assert store.get(session_key(sid)) is None
        assert store.get(session_key(unrelated)) is not None
    finally:
        hub.stop()
