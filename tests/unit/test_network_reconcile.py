"""Reconcile planning against a fake datapath: convergence from any state."""

from __future__ import annotations

import ipaddress
import json

from cove.clock import ManualClock
from cove.datapath.base import BridgeState
from cove.datapath.fake import FakeDatapath
from cove.network import firewall
from cove.network.reconcile import (
    AddAddress,
    CreateBridge,
    DeleteLink,
    NetworkReconciler,
    ReplaceTable,
    SetMtu,
    gateway_interfaces,
    plan,
)
from cove.network.service import NetworkService
from cove.network.spec import NetworkSpec
from cove.store.memory import MemoryStore


def setup() -> tuple[MemoryStore, FakeDatapath, NetworkService, NetworkReconciler]:
    store = MemoryStore(ManualClock())
    dp = FakeDatapath()
    return store, dp, NetworkService(store, ManualClock()), NetworkReconciler(store, dp)


def test_new_network_gets_table_bridge_address_and_up() -> None:
    store, dp, svc, rec = setup()
    net, _ = svc.create(NetworkSpec(name="vnet", subnets=["10.89.0.0/24"]))
    ops = plan([net], dp.observe(), None)
    assert isinstance(ops[0], ReplaceTable)
    assert CreateBridge(net.bridge, 1500) in ops
    assert AddAddress(net.bridge, ipaddress.ip_interface("10.89.0.1/24")) in ops
    rec.run_once()
    br = dp.bridges[net.bridge]
    assert br.up and br.addresses == gateway_interfaces(net)
    assert plan([net], dp.observe(), rec._digest) == []  # converged: nothing to do


def test_unknown_cove_bridges_are_removed_and_drift_repaired() -> None:
    store, dp, svc, rec = setup()
    net, _ = svc.create(NetworkSpec(name="vnet", subnets=["10.89.0.0/24"], mtu=1400))
    dp.bridges["cv-stale000000"] = BridgeState("cv-stale000000", 1500, True)
    dp.bridges[net.bridge] = BridgeState(
        net.bridge, 1500, False, frozenset({ipaddress.ip_interface("10.1.1.1/24")})
    )
    ops = plan([net], dp.observe(), None)
    assert DeleteLink("cv-stale000000") in ops
    assert SetMtu(net.bridge, 1400) in ops
    rec.run_once()
    assert set(dp.bridges) == {net.bridge}
    assert dp.bridges[net.bridge].addresses == gateway_interfaces(net)
    assert dp.bridges[net.bridge].mtu == 1400 and dp.bridges[net.bridge].up


def test_removed_network_loses_bridge_and_rules() -> None:
    store, dp, svc, rec = setup()
    svc.create(NetworkSpec(name="a", subnets=["10.89.0.0/24"]))
    rec.run_once()
    svc.remove("a")
    rec.run_once()
    assert dp.bridges == {}
    rules = json.dumps(dp.tables[(firewall.FAMILY, firewall.TABLE)])
    assert "10.89.0.0" not in rules


def test_a_failing_op_does_not_stop_the_others_and_is_retried() -> None:
    store, dp, svc, rec = setup()
    svc.create(NetworkSpec(name="a", subnets=["10.89.0.0/24"]))
    dp.fail_on = {"replace_table"}
    rec.run_once()
    assert rec.last_error is not None
    assert len(dp.bridges) == 1  # the bridge was still made
    dp.fail_on = set()
    rec.run_once()
    assert rec.last_error is None and (firewall.FAMILY, firewall.TABLE) in dp.tables


def test_internal_network_has_no_masquerade_and_is_fenced() -> None:
    store, dp, svc, rec = setup()
    inner, _ = svc.create(NetworkSpec(name="inner", subnets=["10.50.0.0/24"], internal=True))
    outer, _ = svc.create(NetworkSpec(name="outer", subnets=["10.51.0.0/24"]))
    rules = json.dumps(firewall.compile_table([inner, outer]))
    assert "egress outer" in rules and "egress inner" not in rules
    assert rules.count("internal inner") == 3  # in and out of forward, and input
    assert "isolation between cove networks" in rules


def test_wait_applied_reports_convergence() -> None:
    store, dp, svc, rec = setup()
    _, rev = svc.create(NetworkSpec(name="a"))
    rec.run_once()
    assert rec.applied_revision >= rev
    assert rec.wait_applied(rev, 0.1)


def test_errors_are_kept_per_bridge() -> None:
    store, dp, svc, rec = setup()
    a, _ = svc.create(NetworkSpec(name="a", subnets=["10.89.0.0/24"]))
    rec.run_once()
    dp.fail_on = {"create_bridge"}
    b, _ = svc.create(NetworkSpec(name="b", subnets=["10.89.1.0/24"]))
    rec.run_once()
    assert rec.error_for(b.bridge) is not None and "injected" in str(rec.error_for(b.bridge))
    assert rec.error_for(a.bridge) is None  # a healthy network is not blamed
    dp.fail_on = {"replace_table"}
    svc.create(NetworkSpec(name="c", subnets=["10.89.2.0/24"]))
    rec.run_once()
    assert rec.error_for(a.bridge) is not None  # every network needs the table
