"""Network create/remove semantics over the store (no kernel)."""

from __future__ import annotations

import threading

import pytest

from cove.clock import ManualClock
from cove.errors import AlreadyExists, InUse, NotFound
from cove.network.service import NetworkService
from cove.network.spec import NetworkSpec
from cove.store.memory import MemoryStore


@pytest.fixture
def svc() -> NetworkService:
    return NetworkService(MemoryStore(ManualClock()), ManualClock())


def test_create_get_list_remove(svc: NetworkService) -> None:
    net, _ = svc.create(NetworkSpec(name="vnet", labels={"team": "a"}))
    assert svc.get("vnet") == net
    assert [n.name for n in svc.list()] == ["vnet"]
    svc.remove("vnet")
    with pytest.raises(NotFound):
        svc.get("vnet")


def test_duplicate_name(svc: NetworkService) -> None:
    svc.create(NetworkSpec(name="vnet"))
    with pytest.raises(AlreadyExists, match="vnet"):
        svc.create(NetworkSpec(name="vnet"))


def test_concurrent_creates_never_overlap(svc: NetworkService) -> None:
    errors: list[Exception] = []

    def make(i: int) -> None:
        try:
            svc.create(NetworkSpec(name=f"n{i}"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=make, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    subnets = [s.cidr for n in svc.list() for s in n.subnets]
    assert len(subnets) == 20
    for i, a in enumerate(subnets):
        for b in subnets[i + 1 :]:
            assert not a.overlaps(b)


def test_remove_refuses_while_endpoints_exist(svc: NetworkService) -> None:
    svc.create(NetworkSpec(name="vnet"))
    svc._store.put("endpoints/vnet/ep1", b"{}")
    with pytest.raises(InUse, match="1 active endpoint"):
        svc.remove("vnet")
    assert svc.get("vnet").name == "vnet"
    svc._store.delete("endpoints/vnet/ep1")
    removed, _ = svc.prune()
    assert removed == ["vnet"]
