"""The registry over an in-memory store, without HTTP: concurrent writes,
sessions and their TTLs (on a manual clock), transactions, indexes."""

from __future__ import annotations

import base64
import threading

import pytest

from cove.clock import ManualClock
from cove.errors import Conflict, InvalidArgument, NotFound
from cove.registry import Registry
from cove.registry.decode import service_from_json
from cove.registry.kv import KVOp, TxnAborted
from cove.registry.types import Status, TcpProbe
from cove.store.memory import MemoryStore


@pytest.fixture
def reg() -> Registry:
    clock = ManualClock()
    r = Registry(MemoryStore(clock), clock, "n1")
    r.catalog.ensure_node()
    return r


def test_concurrent_cas_increments_lose_nothing(reg: Registry) -> None:
    reg.kv.put("counter", b"0")

    def bump() -> None:
        for _ in range(50):
            while True:
                entry = reg.kv.get("counter").data[0]
                value = int(base64.b64decode(entry["Value"]))
                if reg.kv.put("counter", str(value + 1).encode(), cas=entry["ModifyIndex"]):
                    break

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert base64.b64decode(reg.kv.get("counter").data[0]["Value"]) == b"200"


def test_concurrent_registrations_all_land(reg: Registry) -> None:
    def register(i: int) -> None:
        for j in range(25):
            inst, checks = service_from_json(
                {"Name": "svc", "ID": f"s{i}-{j}", "Check": {"TTL": "10s"}}, "n1"
            )
            reg.catalog.register_service(inst, checks)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    answer = reg.queries.health_service("svc")
    assert len(answer.data) == 100
    assert all(len(e["Checks"]) == 2 for e in answer.data)
    assert answer.index == max(e["Service"]["ModifyIndex"] for e in answer.data)


def test_session_ttl_expiry_releases_locks(reg: Registry) -> None:
    clock = reg.clock
    assert isinstance(clock, ManualClock)
    sid = reg.sessions.create({"TTL": "10s", "LockDelay": "0s"})
    assert reg.kv.put("lock", b"me", acquire=sid)
    clock.advance(15)  # past the TTL, within Consul's 2x grace
    assert reg.sessions.reap() == 0
    reg.sessions.renew(sid)
    clock.advance(19)
    assert reg.sessions.reap() == 0
    clock.advance(2)
    assert reg.sessions.reap() == 1
    entry = reg.kv.get("lock").data[0]
    assert entry["Session"] == "" and entry["Value"]
    with pytest.raises(NotFound):
        reg.sessions.renew(sid)


def test_session_dies_with_critical_check(reg: Registry) -> None:
    inst, checks = service_from_json({"Name": "w", "Check": {"TTL": "10s", "CheckID": "c1"}}, "n1")
    reg.catalog.register_service(inst, checks)
    with pytest.raises(Conflict, match="critical"):
        reg.sessions.create({"ServiceChecks": [{"ID": "c1"}]})
    reg.catalog.update_check("c1", Status.PASSING, "")
    sid = reg.sessions.create({"ServiceChecks": [{"ID": "c1"}], "Behavior": "delete"})
    assert reg.kv.put("k", b"v", acquire=sid)
    reg.catalog.update_check("c1", Status.CRITICAL, "down")
    assert reg.sessions.reap() == 1
    assert not reg.kv.get("k").found


def test_lock_delay_after_invalidation(reg: Registry) -> None:
    clock = reg.clock
    assert isinstance(clock, ManualClock)
    s1 = reg.sessions.create({"LockDelay": "5s"})
    s2 = reg.sessions.create({"LockDelay": 0})
    assert reg.kv.put("k", b"", acquire=s1)
    reg.sessions.destroy(s1)
    assert not reg.kv.put("k", b"", acquire=s2)
    clock.advance(6)
    assert reg.kv.put("k", b"", acquire=s2)


def test_txn_rolls_back_everything(reg: Registry) -> None:
    reg.kv.put("a", b"1")
    before = reg.store.revision
    with pytest.raises(TxnAborted) as err:
        reg.kv.txn([KVOp("set", "b", b"2"), KVOp("delete", "a"), KVOp("get", "missing")])
    assert err.value.errors == [(2, 'key "missing" doesn\'t exist')]
    assert reg.store.revision == before
    out = reg.kv.txn([KVOp("set", "b", b"2"), KVOp("get-tree", "")])
    assert [r["Key"] for r in out] == ["b", "a", "b"]
    with pytest.raises(InvalidArgument):
        reg.kv.txn([KVOp("frobnicate", "a")])


def test_deregister_is_atomic_and_reports_unknown(reg: Registry) -> None:
    inst, checks = service_from_json(
        {"Name": "w", "ID": "w1", "Checks": [{"TTL": "1s"}, {"TTL": "2s"}]}, "n1"
    )
    reg.catalog.register_service(inst, checks)
    assert len(reg.queries.agent_checks("n1")) == 2
    rev = reg.catalog.deregister_service("w1")
    assert reg.queries.agent_checks("n1") == {}
    assert reg.queries.health_checks("w").data == []
    assert reg.store.revision == rev
    with pytest.raises(NotFound):
        reg.catalog.deregister_service("w1")


def test_register_container_helper(reg: Registry) -> None:
    reg.register_container("ctr-1", "redis", "10.89.0.5", 6379, ["cache"])
    entry = reg.queries.health_service("redis").data[0]
    assert (entry["Service"]["Address"], entry["Service"]["Port"]) == ("10.89.0.5", 6379)
    check = next(c for c in entry["Checks"] if c["CheckID"] == "service:ctr-1")
    assert check["Type"] == "tcp" and check["Status"] == "critical"
    defs = {d.id: d for d in reg.catalog.check_definitions()}
    assert defs["service:ctr-1"].spec == TcpProbe("10.89.0.5:6379")
    assert reg.deregister_container("ctr-1")
    assert not reg.deregister_container("ctr-1")


def test_reregister_under_new_name_and_moving_a_check(reg: Registry) -> None:
    for name in ("a", "b"):
        inst, checks = service_from_json(
            {"Name": name, "ID": "x", "Check": {"TTL": "5s", "CheckID": "cx"}}, "n1"
        )
        reg.catalog.register_service(inst, checks)
    assert reg.queries.health_service("a").data == []
    assert [e["Service"]["ID"] for e in reg.queries.health_service("b").data] == ["x"]
    inst, checks = service_from_json(
        {"Name": "c", "ID": "y", "Check": {"TTL": "5s", "CheckID": "cx"}}, "n1"
    )
    reg.catalog.register_service(inst, checks)
    reg.catalog.deregister_service("x")
    # The check now belongs to y: removing x must not take it along.
    assert list(reg.queries.agent_checks("n1")) == ["cx"]
    assert [c["ServiceID"] for c in reg.queries.health_checks("c").data] == ["y"]
