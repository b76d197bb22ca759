"""The stored form of a check definition: defaults left out, restored on
read; and the catalog handing the runner back what it just wrote."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cove.clock import ManualClock
from cove.codec import dumps, loads
from cove.registry import Registry
from cove.registry.decode import check_from_json, service_from_json
from cove.registry.types import (
    AliasTarget,
    CheckDefinition,
    CheckKind,
    CheckSpec,
    GrpcProbe,
    H2PingProbe,
    HttpProbe,
    ScriptArgs,
    Status,
    TcpProbe,
    Ttl,
    UdpProbe,
    agent_check_key,
    parse_duration,
)
from cove.store.memory import MemoryStore


def test_a_ttl_check_stores_only_what_is_set() -> None:
    d, _ = check_from_json({"CheckID": "c1", "TTL": "1h", "Status": "passing"})
    stored = d.to_json()
    assert stored == {
        "CheckID": "c1",
        "Name": "c1",
        "Kind": "ttl",
        "ServiceID": "",
        "ServiceName": "",
        "Status": "passing",
        "TTL": 3600.0,
    }
    assert CheckDefinition.from_json(json.loads(json.dumps(stored))) == d


@pytest.mark.parametrize(
    "check",
    [
        {"Name": "h", "HTTP": "http://x/", "Interval": "10s", "Method": "POST", "Body": "b",
         "Header": {"A": ["1", "2"]}, "TLSSkipVerify": True, "Timeout": "0.5s", "Notes": "n",
         "SuccessBeforePassing": 2, "FailuresBeforeCritical": 3,
         "DeregisterCriticalServiceAfter": "1m"},
        {"Name": "g", "GRPC": "127.0.0.1:9", "GRPCUseTLS": True, "Interval": "1s"},
        {"Name": "p", "H2PING": "127.0.0.1:9", "H2PingUseTLS": False, "Interval": "1s"},
        {"Name": "s", "Args": ["/bin/true"], "Interval": "1s", "Timeout": "10s"},
        {"Name": "a", "AliasNode": "n2", "AliasService": "web"},
    ],
)  # fmt: skip
def test_every_field_survives_the_stored_form(check: dict[str, object]) -> None:
    d, _ = check_from_json(check)
    assert CheckDefinition.from_json(json.loads(json.dumps(d.to_json()))) == d


def test_short_durations_parse_as_before() -> None:
    assert parse_duration("1h", "x") == 3600.0
    assert parse_duration("30m", "x") == 1800.0
    assert parse_duration("250ms", "x") == 0.25
    assert parse_duration("1m30s", "x") == 90.0
    assert parse_duration("0s", "x") == 0.0


def test_the_catalog_hands_back_what_it_wrote_and_decodes_the_rest() -> None:
    store = MemoryStore(ManualClock())
    reg = Registry(store, ManualClock(), "n1")
    inst, checks = service_from_json(
        {"Name": "web", "ID": "web-1", "Check": {"CheckID": "c1", "TTL": "30s"}}, "n1"
    )
    reg.catalog.register_service(inst, checks)
    kv = store.get(agent_check_key("n1", "c1"))
    assert kv is not None
    first = reg.catalog.definition(kv.value)
    again = reg.catalog.definition(kv.value)  # decoded this time
    assert first == again == checks[0][0]
    assert (first.kind, first.spec, first.initial_status) == (
        CheckKind.TTL,
        Ttl(30.0),
        Status.CRITICAL,
    )


# Stored bytes as cove wrote them before a check's kinds were split into
# records (produced by that code): they must load, and encode back the same.
_PRE_SPLIT = [
    b'{"CheckID":"c1","Name":"c1","Kind":"ttl","ServiceID":"","ServiceName":"","Status":"passing","TTL":3600.0}',
    b'{"CheckID":"h","Name":"h","Kind":"http","ServiceID":"web-1","ServiceName":"","Status":"critical","Interval":10.0,"Timeout":0.5,"HTTP":"http://x/","Method":"POST","Header":{"A":["1","2"]},"Body":"b","TLSSkipVerify":true,"SuccessBeforePassing":2,"FailuresBeforeCritical":3,"DeregisterCriticalServiceAfter":60.0,"Notes":"n"}',
    b'{"CheckID":"hd","Name":"hd","Kind":"http","ServiceID":"","ServiceName":"","Status":"critical","Interval":10.0,"HTTP":"http://x/"}',
    b'{"CheckID":"t","Name":"t","Kind":"tcp","ServiceID":"","ServiceName":"","Status":"critical","Interval":1.0,"TCP":"127.0.0.1:80"}',
    b'{"CheckID":"g","Name":"g","Kind":"grpc","ServiceID":"","ServiceName":"","Status":"critical","Interval":1.0,"TLSSkipVerify":true,"GRPC":"127.0.0.1:9/svc","GRPCUseTLS":true}',
    b'{"CheckID":"u","Name":"u","Kind":"udp","ServiceID":"","ServiceName":"","Status":"critical","Interval":2.0,"Timeout":1.0,"UDP":"127.0.0.1:53"}',
    b'{"CheckID":"p","Name":"p","Kind":"h2ping","ServiceID":"","ServiceName":"","Status":"critical","Interval":1.0,"TLSSkipVerify":true,"H2PING":"127.0.0.1:9","H2PingUseTLS":false}',
    b'{"CheckID":"p2","Name":"p2","Kind":"h2ping","ServiceID":"","ServiceName":"","Status":"critical","Interval":1.0,"H2PING":"127.0.0.1:9"}',
    b'{"CheckID":"s","Name":"s","Kind":"script","ServiceID":"","ServiceName":"","Status":"critical","Interval":1.0,"Args":["/bin/sh","-c","true"]}',
    b'{"CheckID":"a","Name":"a","Kind":"alias","ServiceID":"","ServiceName":"","Status":"critical","AliasNode":"n2","AliasService":"web"}',
    b'{"CheckID":"a2","Name":"a2","Kind":"alias","ServiceID":"","ServiceName":"","Status":"critical","AliasService":"web"}',
    b'{"CheckID":"n","Name":"n","Kind":"","ServiceID":"","ServiceName":"","Status":"warning","Notes":"by-hand"}',
]  # fmt: skip


@pytest.mark.parametrize("raw", _PRE_SPLIT)
def test_a_store_written_before_the_split_loads_and_encodes_the_same(raw: bytes) -> None:
    d = CheckDefinition.from_json(loads(raw))
    assert dumps(d.to_json()) == raw
    assert str(d.kind) == loads(raw)["Kind"]


def test_a_field_of_another_kind_in_an_old_store_is_ignored() -> None:
    # The flat definition kept every field whatever the kind; a TCP check
    # registered with a Method stored it, unused. It loads as a plain TCP check.
    raw = (
        b'{"CheckID":"t","Name":"t","Kind":"tcp","ServiceID":"","ServiceName":"",'
        b'"Status":"critical","Interval":1.0,"Method":"POST","TLSSkipVerify":true,'
        b'"TCP":"h:1"}'
    )
    d = CheckDefinition.from_json(loads(raw))
    assert (d.kind, d.spec, d.interval) == (CheckKind.TCP, TcpProbe("h:1"), 1.0)


_FULL_SPECS: list[CheckSpec] = [
    HttpProbe("http://x/", "PUT", {"A": ("1",)}, "b", tls_skip_verify=True),
    TcpProbe("t:1"),
    GrpcProbe("g:1", use_tls=True, tls_skip_verify=True),
    UdpProbe("u:1"),
    H2PingProbe("h:1", use_tls=False, tls_skip_verify=True),
    AliasTarget(node="an", service="as"),
    ScriptArgs(("/bin/true",)),
    Ttl(4.0),
]


@pytest.mark.parametrize("spec", _FULL_SPECS, ids=lambda s: type(s).__name__)
def test_no_field_is_lost_on_the_way_through_the_store(spec: CheckSpec) -> None:
    full = CheckDefinition(
        id="c", name="n", spec=spec, service_id="s", service_name="web",
        interval=2.0, timeout=3.0, success_before_passing=1, failures_before_critical=2,
        deregister_after=5.0, initial_status=Status.PASSING, notes="x",
    )  # fmt: skip
    stored = full.to_json()
    # Every field differs from its default, so every one must be stored (a
    # field added to a class but not to the stored form fails here): the
    # common fields, less ``spec`` and plus ``Kind``, and the kind's own.
    assert len(stored) == len(dataclasses.fields(CheckDefinition)) + len(dataclasses.fields(spec))
    again = CheckDefinition.from_json(json.loads(json.dumps(stored)))
    assert again == full and again.kind is spec.KIND


def test_a_check_without_a_kind_carries_no_kind_fields() -> None:
    d = CheckDefinition(id="c", name="c")
    assert (d.kind, d.spec) == (CheckKind.NONE, None)
    assert CheckDefinition.from_json(d.to_json()) == d
