"""AttachmentService on a memory store and the recording datapath fake:
nothing half made on failure, per-node scope, GC of what a crashed ADD or
runtime left, STATUS codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cove.clock import ManualClock
from cove.cni.attachments import AttachmentService, AttachRequest, owner
from cove.datapath.fake import FakeContainerDatapath
from cove.errors import AlreadyExists, DatapathError, InvalidArgument
from cove.ipam.allocator import Ipam
from cove.model import ENDPOINTS, IPAM, Network
from cove.network.service import NetworkService
from cove.network.spec import NetworkSpec
from cove.store.base import Delete, Put
from cove.store.memory import MemoryStore

NETNS = "/run/netns/podman-x"


def _setup(
    node: str = "n1", problem: str | None = None
) -> tuple[MemoryStore, AttachmentService, FakeContainerDatapath, Network]:
    clock = ManualClock()
    store = MemoryStore(clock)
    net, _ = NetworkService(store, clock).create(NetworkSpec("vnet", subnets=["10.5.0.0/29"]))
    dp = FakeContainerDatapath(bridges=[net.bridge])
    dp.foreign[Path(NETNS)] = {}
    svc = AttachmentService(
        store, Ipam(store), dp, node, clock.time, datapath_problem=lambda: problem
    )
    return store, svc, dp, net


def _req(cid: str = "c1", **extra: object) -> AttachRequest:
    body = {"containerID": cid, "ifname": "eth0", "netns": NETNS, "network": "vnet", **extra}
    return AttachRequest.from_json(body)


def test_attach_stores_an_attachment_and_an_ordinary_endpoint() -> None:
    store, svc, dp, _net = _setup()
    att, _ = svc.attach(_req(podName="Web_1", aliases=["www"]))
    assert str(att.ipv4) == "10.5.0.2" and att.host_veth.startswith("cn")
    (kv,) = store.range(ENDPOINTS).kvs
    ep = json.loads(kv.value)
    # Under its node, naming it: only this node's agent watches it on a bridge.
    assert kv.key == f"endpoints/vnet/n1/{att.endpoint_id}" and ep["node"] == "n1"
    assert ep["container_name"] == "web_1" and ep["aliases"] == ["www", "web-1"]
    assert ep["netns"] == NETNS and ep["interface"] == "eth0"
    assert dp.foreign[Path(NETNS)]["eth0"].addresses
    assert dp.namespaces == {}  # cove's bind of the runtime's namespace is gone
    with pytest.raises(AlreadyExists):
        svc.attach(_req())


def test_a_failed_attach_leaves_nothing() -> None:
    store, svc, dp, _net = _setup()
    dp.fail_on.add("attach.configure")
    with pytest.raises(DatapathError):
        svc.attach(_req())
    assert not store.range(IPAM).kvs and not store.range(ENDPOINTS).kvs
    assert svc.list() == [] and dp.veths == {}
    with pytest.raises(InvalidArgument, match="nope"):
        svc.attach(_req(network="nope"))


def test_detach_is_idempotent_and_frees_an_address_a_crashed_add_held() -> None:
    store, svc, dp, net = _setup()
    svc.attach(_req())
    assert svc.detach("c1", "eth0", "vnet") is not None
    assert svc.detach("c1", "eth0", "vnet") is None
    # An ADD that died between its address and its records.
    Ipam(store).allocate(net, owner("n1", "c2", "eth0"))
    svc.detach("c2", "eth0", "vnet")
    assert not store.range(IPAM).kvs and dp.veths == {}


def test_detach_removes_an_endpoint_an_older_agent_left_at_its_former_key() -> None:
    store, svc, _dp, _net = _setup()
    att, _ = svc.attach(_req())
    (kv,) = store.range(ENDPOINTS).kvs
    store.txn([], [Delete(kv.key), Put(f"endpoints/vnet/{att.endpoint_id}", kv.value)])
    assert svc.detach("c1", "eth0", "vnet") is not None
    assert store.range(ENDPOINTS).kvs == ()


def test_gc_is_per_node_and_keeps_the_valid() -> None:
    store, svc, dp, net = _setup()
    other = AttachmentService(store, Ipam(store), dp, "n2", lambda: 0.0)
    for name in ("other", "lost"):
        dp.foreign[Path(f"/run/netns/{name}")] = {}
    svc.attach(_req("keep"))
    svc.attach(_req("lost", netns="/run/netns/lost"))
    other.attach(_req("theirs", netns="/run/netns/other"))
    Ipam(store).allocate(net, owner("n1", "orphan", "eth0"))
    assert svc.gc("vnet", [("keep", "eth0")]) == []
    assert [a.container_id for a in svc.list()] == ["keep"]
    assert [a.container_id for a in other.list()] == ["theirs"]
    owners = {json.loads(kv.value)["owner"] for kv in store.range(IPAM).kvs}
    assert owners == {owner("n1", "keep", "eth0"), owner("n2", "theirs", "eth0")}


def test_status_codes() -> None:
    _store, svc, _dp, _net = _setup()
    assert svc.status("vnet") == (0, "")
    assert svc.status("nope")[0] == 50
    for i in range(5):  # a /29: five addresses for containers
        svc.attach(_req(f"c{i}", ifname=f"eth{i}"))
    code, msg = svc.status("vnet")
    assert code == 50 and "no free address" in msg
    _s, broken, _d, _n = _setup(problem="bridge cv-x is missing")
    code, msg = broken.status("vnet")
    assert code == 51 and "cv-x" in msg
