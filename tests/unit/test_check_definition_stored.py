"""The stored form of a check definition: defaults left out, restored on
read; and the catalog handing the runner back what it just wrote."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cove.clock import ManualClock
from cove.registry import Registry
from cove.registry.decode import check_from_json, service_from_json
from cove.registry.types import CheckDefinition, CheckKind, Status, agent_check_key, parse_duration
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
    assert (first.kind, first.ttl, first.initial_status) == (CheckKind.TTL, 30.0, Status.CRITICAL)


def test_no_field_is_lost_on_the_way_through_the_store() -> None:
    full = CheckDefinition(
        id="c", name="n", kind=CheckKind.HTTP, service_id="s", service_name="web",
        interval=2.0, timeout=3.0, ttl=4.0, http="http://x/", method="PUT",
        header={"A": ("1",)}, body="b", tls_skip_verify=True, tcp="t:1", grpc="g:1",
        grpc_use_tls=True, udp="u:1", h2ping="h:1", h2ping_use_tls=False, alias_node="an",
        alias_service="as", args=("/bin/true",), success_before_passing=1,
        failures_before_critical=2, deregister_after=5.0, initial_status=Status.PASSING,
        notes="x",
    )  # fmt: skip
    stored = full.to_json()
    # Every field differs from its default, so every one must be stored (a
    # field added to the class but not to the stored form fails here).
    assert len(stored) == len(dataclasses.fields(CheckDefinition))
    assert CheckDefinition.from_json(json.loads(json.dumps(stored))) == full
