"""Prepared queries in DNS: ``<query>.query.cove`` (and ``.consul``) answer
what the query executes to, through dnspython against cove's DnsService on
a loopback port, over the registry; a changed query changes the answer."""

from __future__ import annotations

import time
from collections.abc import Iterator

import dns.message
import dns.query
import dns.rcode
import pytest

from cove.clock import SystemClock
from cove.dns import DnsConfig, DnsService
from cove.dns.registry_source import RegistryServices
from cove.registry import Registry, Status
from cove.registry.prepared import parse
from cove.store.hub import WatchHub
from cove.store.memory import MemoryStore

HOST = "127.0.0.1"


@pytest.fixture
def setup() -> Iterator[tuple[Registry, DnsService]]:
    store = MemoryStore(SystemClock())
    hub = WatchHub(store)
    hub.start()
    registry = Registry(store, SystemClock(), "node1", node_address="10.1.0.1")
    registry.catalog.ensure_node()
    svc = DnsService(
        store,
        SystemClock(),
        DnsConfig(host_port=0),
        hub=hub,
        services=RegistryServices(registry.queries, hub, prepared=registry.prepared),
    )
    svc.start()
    try:
        yield registry, svc
    finally:
        svc.stop()
        hub.stop()
        store.close()


def answer(svc: DnsService, name: str, rdtype: str = "A") -> tuple[int, list[str]]:
    msg = dns.query.udp(dns.message.make_query(name, rdtype), HOST, port=svc.host_port, timeout=2)
    return msg.rcode(), sorted(r.to_text() for rrset in msg.answer for r in rrset)


def until(svc: DnsService, name: str, want: list[str]) -> None:
    deadline = time.monotonic() + 5
    while answer(svc, name)[1] != want:
        assert time.monotonic() < deadline, f"{name} never became {want}"
        time.sleep(0.02)


def test_query_names_answer_the_querys_instances(setup: tuple[Registry, DnsService]) -> None:
    registry, svc = setup
    registry.register_container("db-1", "db", "10.1.0.5", 5432, tags=["primary"])
    registry.register_container("db-2", "db", "10.1.0.6", 5432, tags=["replica"])
    registry.catalog.update_check("service:db-1", Status.PASSING, "ok")
    registry.catalog.update_check("service:db-2", Status.WARNING, "lagging")

    def sessions(_: str) -> bool:
        return False  # no query here names a session

    qid = registry.prepared.create(
        parse({"Name": "db-any", "Service": {"Service": "db"}}, sessions_exist=sessions)
    )
    registry.prepared.create(
        parse(
            {"Name": "db-ok", "Service": {"Service": "db", "OnlyPassing": True}},
            sessions_exist=sessions,
        )
    )
    assert answer(svc, "db-any.query.cove") == (dns.rcode.NOERROR, ["10.1.0.5", "10.1.0.6"])
    assert answer(svc, "db-ok.query.consul")[1] == ["10.1.0.5"]
    assert answer(svc, f"{qid}.query.cove")[1] == ["10.1.0.5", "10.1.0.6"]
    rcode, srv = answer(svc, "db-ok.query.cove", "SRV")
    assert rcode == dns.rcode.NOERROR and [r.split()[2] for r in srv] == ["5432"]
    assert answer(svc, "nope.query.cove")[0] == dns.rcode.NXDOMAIN
    # The query changes: its name answers the new way (the cache follows).
    registry.prepared.update(
        qid,
        parse(
            {"Name": "db-any", "Service": {"Service": "db", "Tags": ["replica"]}},
            sessions_exist=sessions,
        ),
    )
    until(svc, "db-any.query.cove", ["10.1.0.6"])
    # An instance going critical leaves every query's answer.
    registry.catalog.update_check("service:db-2", Status.CRITICAL, "down")
    until(svc, "db-any.query.cove", [])
