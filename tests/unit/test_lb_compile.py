"""The VIP compiler and controller logic, without a kernel."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from cove.clock import ManualClock, SystemClock
from cove.errors import DatapathError, InvalidArgument
from cove.lb import compile as lbc
from cove.lb.backends import EndpointBackends
from cove.lb.controller import LbController
from cove.lb.model import Backend, Proto, Vip
from cove.lb.vips import VipService
from cove.model import Endpoint
from cove.store import MemoryStore


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def vip(service: str = "web", addr: str = "10.96.0.5", **kw: Any) -> Vip:
    return Vip(service, ip(addr), **kw)


def kinds(cmds: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    out = []
    for c in cmds:
        ((verb, body),) = c.items()
        ((kind, obj),) = body.items()
        out.append((verb, kind, obj.get("name", obj.get("chain", ""))))
    return out


def test_buckets_follow_weights_reduced_and_capped() -> None:
    assert lbc.buckets([2, 4, 6]) == [1, 2, 3]
    assert lbc.buckets([1, 1]) == [1, 1]
    big = lbc.buckets([1, 5000, 5000])
    assert sum(big) <= lbc.MAX_BUCKETS + 2 and big[0] >= 1 and big[1] == big[2]


def test_plan_groups_by_port_and_drops_wrong_family_and_zero_weight() -> None:
    svc = lbc.plan(
        vip(),
        [
            Backend(ip("10.0.0.2"), 80),
            Backend(ip("10.0.0.1"), 80, 3),
            Backend(ip("10.0.0.3"), 81),
            Backend(ip("fd00::1"), 80),
            Backend(ip("10.0.0.4"), 80, 0),
        ],
    )
    assert [g.vport for g in svc.groups] == [80, 81]
    assert [str(b.address) for b in svc.groups[0].backends] == ["10.0.0.1", "10.0.0.2"]
    fixed = lbc.plan(vip(port=443), [Backend(ip("10.0.0.1"), 80), Backend(ip("10.0.0.3"), 81)])
    assert [g.vport for g in fixed.groups] == [443]
    assert len(fixed.groups[0].backends) == 2


def test_table_maps_every_protocol_and_weights_into_numgen_ranges() -> None:
    svc = lbc.plan(vip(), [Backend(ip("10.0.0.1"), 80, 1), Backend(ip("10.0.0.2"), 80, 3)])
    empty = lbc.plan(vip("idle", "10.96.0.6"), [])
    objs = lbc.table_objects({"web": svc, "idle": empty})
    text = json.dumps(objs)
    elements = {o["element"]["name"]: o["element"]["elem"] for o in objs if "element" in o}
    assert sorted(elements["vips_v4"]) == ["10.96.0.5", "10.96.0.6"]
    assert {e["concat"][1] for e in elements["live_v4"]} == {"tcp", "udp"}
    assert all(e["concat"][0] == "10.96.0.5" for e in elements["live_v4"])  # idle is not live
    assert elements["hairpin_v4"] == [
        {"concat": ["10.0.0.1", "10.0.0.1"]},
        {"concat": ["10.0.0.2", "10.0.0.2"]},
    ]
    assert '"mod": 4' in text and '{"range": [1, 3]}' in text
    # Chains come before the elements and rules that name them.
    first_rule = next(i for i, o in enumerate(objs) if "rule" in o)
    last_chain = max(i for i, o in enumerate(objs) if "chain" in o)
    assert last_chain < first_rule


def test_a_backend_change_only_refills_the_service_chain() -> None:
    old = lbc.plan(vip(), [Backend(ip("10.0.0.1"), 80), Backend(ip("10.0.0.2"), 80)])
    new = lbc.plan(vip(), [Backend(ip("10.0.0.1"), 80)])
    cmds = kinds(lbc.service_update(old, new))
    chain = lbc.chain_name("web", 80)
    rule = ("add", "rule", chain)
    assert cmds == [("add", "chain", chain), ("flush", "chain", chain), rule, rule]


def test_a_missed_lookup_falls_back_to_a_backend_and_a_vip_is_never_routed_on() -> None:
    backends = [Backend(ip("10.0.0.1"), 80), Backend(ip("10.0.0.2"), 80)]
    objs = lbc.table_objects({"web": lbc.plan(vip(), backends)})
    chain = lbc.chain_name("web", 80)
    rules = [o["rule"] for o in objs if "rule" in o and o["rule"]["chain"] == chain]
    # The numgen map first, then the same rules' first backend.
    assert "map" in json.dumps(rules[0]["expr"])
    assert rules[-1]["expr"][-1] == {"dnat": {"family": "ip", "addr": "10.0.0.1", "port": 80}}
    for hook in ("prerouting", "output"):
        chain_rules = [o["rule"] for o in objs if "rule" in o and o["rule"]["chain"] == hook]
        vmap = next(i for i, r in enumerate(chain_rules) if "vmap" in json.dumps(r["expr"]))
        after = json.dumps(chain_rules[vmap + 1]["expr"])
        assert '"@vips_v4"' in after and '"drop"' in after
    sticky = lbc.plan(vip(affinity_timeout=30), backends)
    chain_rules = [o["rule"] for o in lbc.table_objects({"web": sticky}) if "rule" in o]
    last = [r for r in chain_rules if r["chain"] == chain][-1]
    assert last["expr"] == [{"goto": {"target": f"e_{chain[2:]}_{lbc._backend_id(backends[0])}"}}]


def test_service_coming_and_going_hooks_and_unhooks_it() -> None:
    svc = lbc.plan(vip(), [Backend(ip("10.0.0.1"), 80)])
    up = kinds(lbc.service_update(None, svc))
    assert ("add", "element", "svc_v4") in up and ("add", "element", "vips_v4") in up
    down = kinds(lbc.service_update(svc, None))
    assert down[0] == ("delete", "element", "svc_v4")
    assert ("delete", "chain", lbc.chain_name("web", 80)) in down
    assert down.index(("flush", "chain", lbc.chain_name("web", 80))) < down.index(
        ("delete", "chain", lbc.chain_name("web", 80))
    )
    # Losing its last backend keeps the VIP (so it refuses) but unhooks the port.
    empty = kinds(lbc.service_update(svc, lbc.plan(svc.vip, [])))
    assert ("delete", "element", "svc_v4") in empty
    assert ("delete", "element", "vips_v4") not in empty


def test_affinity_uses_timeout_sets_per_backend() -> None:
    svc = lbc.plan(
        vip(affinity_timeout=600), [Backend(ip("10.0.0.1"), 80), Backend(ip("10.0.0.2"), 80)]
    )
    objs = lbc.table_objects({"web": svc})
    sets = [o["set"] for o in objs if "set" in o and o["set"]["name"].startswith("a_")]
    assert len(sets) == 2 and all(s["timeout"] == 600 for s in sets)
    assert "update" in json.dumps(objs)
    # Dropping one backend deletes its set after the chains that use it.
    one = lbc.plan(svc.vip, svc.groups[0].backends[:1])
    cmds = kinds(lbc.service_update(svc, one))
    assert cmds[-1][:2] == ("delete", "set")
    assert not [c for c in cmds if c[:2] == ("add", "set")]


class FakeNft:
    def __init__(self) -> None:
        self.tables: list[list[Mapping[str, Any]]] = []
        self.txns: list[list[Mapping[str, Any]]] = []
        self.fail = False

    def transaction(self, commands: Sequence[Mapping[str, Any]]) -> None:
        if self.fail:
            self.fail = False
            raise DatapathError("injected")
        self.txns.append(list(commands))

    def replace_table(self, family: str, name: str, objects: Sequence[Mapping[str, Any]]) -> None:
        assert (family, name) == ("inet", "cove_lb")
        self.tables.append(list(objects))

    def delete_table(self, family: str, name: str) -> None:
        pass


def put_endpoint(store: MemoryStore, name: str, addr: str, *services: str) -> int:
    ep = Endpoint(
        id=name, network="n", container_id=name, container_name=name, interface="eth0",
        host_veth="", mac="", ipv4=ipaddress.IPv4Address(addr), services=services,
    )  # fmt: skip
    return store.put(f"endpoints/n/{name}", json.dumps(ep.to_json()).encode())


def test_controller_applies_one_small_transaction_per_change_and_resyncs_on_failure() -> None:
    store = MemoryStore(ManualClock())
    nft = FakeNft()
    vips = VipService(store)
    vips.assign("web")
    vips.assign("db")
    put_endpoint(store, "w1", "10.0.0.1", "web:80")
    ctl = LbController(store, nft, EndpointBackends(store), clock=SystemClock())
    ctl.resync()
    assert len(nft.tables) == 1
    assert [len(g.backends) for g in ctl.applied["web"].groups] == [1]
    put_endpoint(store, "w2", "10.0.0.2", "web:80")
    assert ctl.sync({"web"}) == 1
    assert [len(g.backends) for g in ctl.applied["web"].groups] == [2]
    assert ctl.sync(None) == 0  # nothing else changed
    nft.fail = True
    put_endpoint(store, "w3", "10.0.0.3", "web:80")
    ctl.sync({"web"})
    assert len(nft.tables) == 2  # fell back to a full resync
    assert [len(g.backends) for g in ctl.applied["web"].groups] == [3]


def test_endpoint_backends_name_the_services_an_event_touches() -> None:
    store = MemoryStore(ManualClock())
    watch = store.watch("endpoints/")
    put_endpoint(store, "a", "10.0.0.1", "web:80", "metrics:9100")
    store.delete("endpoints/n/a")
    events = watch.next(timeout=1)
    backends = EndpointBackends(store)
    assert backends.affected(events) == {"web", "metrics"}
    put_endpoint(store, "b", "10.0.0.2", "web:8080", "broken")
    assert backends.passing() == {"web": [Backend(ip("10.0.0.2"), 8080)]}


def test_vip_protocols_round_trip() -> None:
    v = vip(port=53, protocols=(Proto.UDP,), affinity_timeout=30)
    assert Vip.from_json(json.loads(json.dumps(v.to_json()))) == v
    with pytest.raises(InvalidArgument, match="port"):
        vip(port=70000)


def test_hairpin_entry_stays_while_any_service_lists_the_backend() -> None:
    store = MemoryStore(ManualClock())
    nft = FakeNft()
    vips = VipService(store)
    vips.assign("web")
    vips.assign("api")
    put_endpoint(store, "shared", "10.0.0.1", "web:80", "api:81")
    ctl = LbController(store, nft, EndpointBackends(store), clock=SystemClock())
    ctl.resync()

    def hairpin_ops() -> list[tuple[str, str, str]]:
        return [k for k in kinds(nft.txns[-1]) if k[2] == "hairpin_v4"]

    put_endpoint(store, "shared", "10.0.0.1", "web:80")
    ctl.sync({"web", "api"})
    assert hairpin_ops() == []
    put_endpoint(store, "shared", "10.0.0.1")
    ctl.sync({"web", "api"})
    assert hairpin_ops() == [("delete", "element", "hairpin_v4")]
    put_endpoint(store, "shared", "10.0.0.1", "api:81")
    ctl.sync({"web", "api"})
    assert hairpin_ops() == [("add", "element", "hairpin_v4")]
