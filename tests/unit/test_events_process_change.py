"""A container's process in the event stream: each ``cluster/status/<node>/``
record is told from the one before it as Docker tells it (die with its exit
code, start, restart), and a record that says nothing new gives no event."""

from __future__ import annotations

import json

from cove.events.change import Action, Filter, Kind, change_of
from cove.store.base import Event, EventType, KeyValue

KEY = "cluster/status/h1/0123456789abcdef0123"


def _state(status: str, **fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": KEY.rsplit("/", 1)[1], "status": status, "pid": 0, "exit_code": None,
        "started_at": 0.0, "finished_at": 0.0, "restart_count": 0, "node": "h1", "name": "web",
    }  # fmt: skip
    return {**base, **fields}


def _event(new: dict[str, object], old: dict[str, object] | None, rev: int = 20) -> Event:
    prev = None if old is None else KeyValue(KEY, json.dumps(old).encode(), 5, rev - 1, 2)
    kv = KeyValue(KEY, json.dumps(new).encode(), 5 if prev else rev, rev, 3 if prev else 1)
    return Event(EventType.PUT, kv, prev)


def test_an_exit_is_a_die_with_its_exit_code_and_the_containers_name() -> None:
    old = _state("running", pid=42, started_at=100.0)
    change = change_of(
        _event(_state("exited", exit_code=3, started_at=100.0, finished_at=101.0), old)
    )
    assert change is not None
    assert (change.index, change.kind, change.action, change.name) == (
        20, Kind.CONTAINER, Action.DIE, "web",
    )  # fmt: skip
    assert change.attrs["exitCode"] == "3" and change.attrs["node"] == "h1"
    assert change.attrs["id"] == "0123456789abcdef0123"
    assert Filter.parse(["type=container", "action=die", "name=web"])(change)


def test_a_first_record_that_is_an_exit_is_a_die() -> None:
    change = change_of(_event(_state("exited", exit_code=0, started_at=1.0, finished_at=2.0), None))
    assert change is not None and change.action is Action.DIE and change.attrs["exitCode"] == "0"


def test_a_restart_under_the_policy_is_die_then_restart() -> None:
    running = _state("running", started_at=100.0)
    dying = _state("restarting", exit_code=1, started_at=100.0, finished_at=101.0, restart_count=1)
    back = _state("running", started_at=101.1, finished_at=101.0, restart_count=1)
    die = change_of(_event(dying, running, 30))
    restart = change_of(_event(back, dying, 31))
    assert die is not None and (die.action, die.attrs["exitCode"]) == (Action.DIE, "1")
    assert restart is not None and restart.action is Action.RESTART
    assert "exitCode" not in restart.attrs
    # A restart whose restarting record was never written still says so.
    skipped = change_of(_event(back, running, 32))
    assert skipped is not None and skipped.action is Action.RESTART


def test_a_start_after_a_stop_is_a_start() -> None:
    stopped = _state("exited", exit_code=143, started_at=100.0, finished_at=110.0, restart_count=2)
    again = _state("running", started_at=120.0, finished_at=110.0, restart_count=2)
    change = change_of(_event(again, stopped))
    assert change is not None and change.action is Action.START
    first = change_of(_event(_state("running", started_at=5.0), None))
    assert first is not None and first.action is Action.START


def test_records_that_say_nothing_new_give_no_event() -> None:
    running = _state("running", pid=42, started_at=100.0)
    # A stop asked for (stopped_by_user) before the process is gone.
    assert change_of(_event({**running, "stopped_by_user": True}, running)) is None
    assert change_of(_event(_state("created"), None)) is None
    exited = _state("exited", exit_code=1, started_at=100.0, finished_at=101.0)
    restarting = {**exited, "status": "restarting"}
    # A stop of a container waiting to restart: it died already.
    assert change_of(_event(exited, restarting)) is None
    gone = Event(EventType.DELETE, KeyValue(KEY, b"", 5, 40, 0), KeyValue(KEY, b"{}", 5, 39, 3))
    assert change_of(gone) is None
    assert change_of(_event({"status": "running", "started_at": "junk"}, None)) is None


def test_a_container_record_under_its_node_is_named_by_the_container_and_its_claim_is_silent() -> (
    None
):
    rec = KeyValue("containers/h2/web", json.dumps({"desired": "running"}).encode(), 7, 7, 1)
    change = change_of(Event(EventType.PUT, rec))
    assert change is not None and (change.kind, change.action, change.name) == (
        Kind.CONTAINER, Action.CREATE, "web",
    )  # fmt: skip
    claim = KeyValue("cluster/names/web", b'{"node":"h2","id":"x"}', 7, 7, 1)
    assert change_of(Event(EventType.PUT, claim)) is None
