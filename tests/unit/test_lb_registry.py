"""Registry instances as VIP backends: passing only, weighted, per service."""

from __future__ import annotations

import ipaddress

from cove.clock import ManualClock
from cove.lb.model import Backend
from cove.lb.registry import RegistryBackends
from cove.registry import types as rt
from cove.registry.catalog import Catalog
from cove.store import MemoryStore


def test_passing_weighted_instances_and_the_services_a_check_touches() -> None:
    store = MemoryStore(ManualClock())
    catalog = Catalog(
        store, ManualClock(), rt.Node(name="n1", address="10.0.0.9", datacenter="dc1")
    )
    catalog.ensure_node()
    ttl = rt.CheckDefinition(id="c2", name="c2", spec=rt.Ttl(30.0), service_id="w2")
    catalog.register_service(
        rt.ServiceInstance(
            id="w1", name="web", node="n1", address="10.0.0.1", port=80, weights=(3, 1)
        ),
        [],
    )
    catalog.register_service(
        rt.ServiceInstance(id="w2", name="web", node="n1", address="10.0.0.2", port=80),
        [(ttl, rt.Status.CRITICAL)],
    )
    catalog.register_service(rt.ServiceInstance(id="d1", name="db", node="n1", port=5432), [])
    backends = RegistryBackends(store)
    ip = ipaddress.ip_address
    assert backends.passing() == {
        "db": [Backend(ip("10.0.0.9"), 5432)],  # the node's address
        "web": [Backend(ip("10.0.0.1"), 80, 3)],
    }
    watch = store.watch("registry/chk/")
    catalog.update_check("c2", rt.Status.PASSING, "ok")
    assert backends.affected(watch.next(timeout=1)) == {"web"}
    assert len(backends.passing(["web"])["web"]) == 2


def test_service_names_are_case_insensitive() -> None:
    store = MemoryStore(ManualClock())
    catalog = Catalog(
        store, ManualClock(), rt.Node(name="n1", address="10.0.0.9", datacenter="dc1")
    )
    catalog.ensure_node()
    catalog.register_service(
        rt.ServiceInstance(id="a", name="Web", node="n1", address="10.0.0.1", port=80), []
    )
    catalog.register_service(
        rt.ServiceInstance(id="b", name="web", node="n1", address="10.0.0.2", port=80), []
    )
    backends = RegistryBackends(store)
    got = backends.passing(["WEB"])
    assert sorted(str(b.address) for b in got["web"]) == ["10.0.0.1", "10.0.0.2"]
    watch = store.watch(rt.SERVICES)
    catalog.deregister_service("a")
    assert backends.affected(watch.next(timeout=1)) == {"web"}
