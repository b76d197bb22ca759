"""ContainerReconciler against the recording container datapath: attach,
detach, repair after a crash and a failed attach, all without root."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from cove.clock import ManualClock
from cove.datapath.base import HostVeth, InsideLink
from cove.datapath.fake import FakeContainerDatapath, FakeNft
from cove.errors import DatapathError, StoreError
from cove.model import ENDPOINTS, NETWORKS, Endpoint, Network, Subnet
from cove.runtime import guard, reconcile
from cove.runtime.keys import container_key
from cove.runtime.reconcile import ContainerReconciler
from cove.runtime.spec import Container
from cove.store.memory import MemoryStore

CID = "c0ffee" + "0" * 58
NET = Network(
    id="n" * 64,
    name="front",
    subnets=(
        Subnet(ipaddress.ip_network("10.89.0.0/24"), ipaddress.ip_address("10.89.0.1")),
        Subnet(ipaddress.ip_network("fd00:89::/64"), ipaddress.ip_address("fd00:89::1")),
    ),
    bridge="cv-front00000",
    mtu=1400,
)
BACK = Network(
    id="b" * 64,
    name="back",
    subnets=(Subnet(ipaddress.ip_network("10.90.0.0/24"), ipaddress.ip_address("10.90.0.1")),),
    bridge="cv-back000000",
)


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.store = MemoryStore(ManualClock())
        self.dp = FakeContainerDatapath(bridges=[NET.bridge, BACK.bridge])
        self.nft = FakeNft()
        self.guard_nft = FakeNft()
        self.rec = ContainerReconciler(
            self.store, self.dp, self.nft, tmp_path / "files", lambda: "nameserver 9.9.9.9\n",
            guard_nft=self.guard_nft,
        )  # fmt: skip
        for net in (NET, BACK):
            self.store.put(NETWORKS + net.name, json.dumps(net.to_json()).encode())

    def container(self, *networks: str, cid: str = CID, name: str = "web") -> Container:
        c = Container(id=cid, name=name, argv=("sleep",), hostname=name, networks=networks)
        self.store.put(container_key(c.node, name), json.dumps(c.to_json()).encode())
        return c

    def endpoint(self, c: Container, net: Network, n: int) -> Endpoint:
        eid = f"{n:x}" * 64
        ep = Endpoint(
            id=eid[:64],
            network=net.name,
            container_id=c.id,
            container_name=c.name,
            interface=f"eth{n}",
            host_veth="cv" + eid[:10],
            mac=f"02:42:0a:00:00:{n:02x}",
            ipv4=ipaddress.IPv4Address(f"{net.ipv4.cidr[10 + n]}") if net.ipv4 else None,
            ipv6=ipaddress.IPv6Address(f"{net.ipv6.cidr[10 + n]}") if net.ipv6 else None,
        )
        key = f"{ENDPOINTS}{net.name}/{ep.id}"
        self.store.put(key, json.dumps(ep.to_json()).encode())
        return ep

    def guarded(self) -> set[str]:
        return set(self.rec.guard.ports)


def test_run_creates_namespace_pair_addresses_routes_and_etc(tmp_path: Path) -> None:
    env = Env(tmp_path)
    c = env.container("front")
    ep = env.endpoint(c, NET, 0)
    env.rec.sync(only=CID, name="web")
    link = env.dp.namespaces[CID]["eth0"]
    assert link.up and link.mtu == 1400 and link.mac == ep.mac
    assert link.addresses == {
        ipaddress.ip_interface("10.89.0.10/24"),
        ipaddress.ip_interface("fd00:89::a/64"),
    }
    assert env.dp.veths[ep.host_veth].master == NET.bridge
    assert env.dp.routes[CID] == (NET.ipv4.gateway, NET.ipv6.gateway)  # type: ignore[union-attr]
    assert env.guarded() == {ep.host_veth}
    etc = env.rec.etc_dir(CID)
    assert "nameserver 10.89.0.1" in (etc / "resolv.conf").read_text()
    assert "10.89.0.10" in (etc / "hosts").read_text()
    # Converged: a second pass changes nothing.
    assert env.rec.sync() == []


def test_attach_is_one_datapath_call_and_sets_no_route_for_a_second_network(
    tmp_path: Path,
) -> None:
    env = Env(tmp_path)
    c = env.container("front")
    env.endpoint(c, NET, 0)
    env.rec.sync(only=CID, name="web")
    c = env.container("front", "back")
    ep = env.endpoint(c, BACK, 1)
    env.dp.ops.clear()
    env.rec.attach(CID, "web", ep.id)
    assert env.dp.op_names() == ["attach"]  # no observe, no full pass
    assert env.dp.namespaces[CID]["eth1"].addresses == {ipaddress.ip_interface("10.90.0.11/24")}
    assert env.dp.routes[CID][0] == NET.ipv4.gateway  # type: ignore[union-attr]
    assert ep.host_veth in env.guarded()
    assert "10.90.0.11" in (env.rec.etc_dir(CID) / "hosts").read_text()
    assert env.rec.sync() == []


def test_detach_retires_at_once_and_reaps_later(tmp_path: Path) -> None:
    env = Env(tmp_path)
    c = env.container("front", "back")
    env.endpoint(c, NET, 0)
    gone = env.endpoint(c, BACK, 1)
    env.rec.sync(only=CID, name="web")
    env.store.delete(f"{ENDPOINTS}back/{gone.id}")
    env.container("front")
    env.rec.detach(CID, "web", [gone.host_veth])
    # Out of the container at once (renamed, down), deleted later.
    assert "eth1" not in env.dp.namespaces[CID]
    assert env.dp.retired == {gone.host_veth}
    assert not env.dp.veths[gone.host_veth].up
    env.rec.reap_now()
    assert gone.host_veth not in env.dp.veths
    assert set(env.dp.namespaces[CID]) == {"eth0"}
    assert gone.host_veth not in env.guarded()
    assert "10.90.0.11" not in (env.rec.etc_dir(CID) / "hosts").read_text()
    assert env.rec.sync() == []


def test_full_pass_repairs_after_a_crash(tmp_path: Path) -> None:
    """The agent died half-way: one container's namespace is gone, another's
    link is down without addresses or routes, and a namespace and a host
    veth that nothing wants are left over. One full pass brings it all in
    line, and the next finds nothing to do."""
    env = Env(tmp_path)
    c = env.container("front")
    ep = env.endpoint(c, NET, 0)
    other = env.container("back", cid="d" * 64, name="db")
    oep = env.endpoint(other, BACK, 2)
    env.rec.sync()
    env.dp.crash(CID)
    env.dp.namespaces[other.id]["eth2"] = InsideLink("eth2", 1500, False, oep.mac)
    env.dp.routes[other.id] = (None, None)
    env.dp.namespaces["e" * 64] = {}
    env.dp.veths["cv00000000fe"] = HostVeth("cv00000000fe", NET.bridge, True, 1500)
    env.dp.ops.clear()

    ops = env.rec.sync()

    assert ops
    assert set(env.dp.namespaces) == {CID, other.id}
    assert set(env.dp.veths) == {ep.host_veth, oep.host_veth}
    assert env.dp.namespaces[CID]["eth0"].addresses == {
        ipaddress.ip_interface("10.89.0.10/24"),
        ipaddress.ip_interface("fd00:89::a/64"),
    }
    assert env.dp.namespaces[other.id]["eth2"].up
    assert env.dp.namespaces[other.id]["eth2"].addresses == {
        ipaddress.ip_interface("10.90.0.12/24")
    }
    assert env.dp.routes[other.id][0] == BACK.ipv4.gateway  # type: ignore[union-attr]
    assert env.rec.sync() == []


def test_failed_attach_leaves_nothing_and_the_fallback_pass_builds_the_link(
    tmp_path: Path,
) -> None:
    env = Env(tmp_path)
    c = env.container("front")
    env.endpoint(c, NET, 0)
    env.rec.sync(only=CID, name="web")
    c = env.container("front", "back")
    ep = env.endpoint(c, BACK, 1)
    env.dp.fail_on.add("attach.configure")
    env.dp.ops.clear()
    env.rec.attach(CID, "web", ep.id)
    # The fast path failed and removed its pair; the container's pass
    # then observed the kernel and made it again.
    assert env.dp.op_names() == ["attach", "attach", "set_default_routes"]
    assert env.dp.namespaces[CID]["eth1"].addresses == {ipaddress.ip_interface("10.90.0.11/24")}
    assert env.rec.sync() == []


def test_attach_that_cannot_be_made_raises_and_leaks_nothing(tmp_path: Path) -> None:
    env = Env(tmp_path)
    c = env.container("front")
    env.endpoint(c, NET, 0)
    env.rec.sync(only=CID, name="web")
    before = (dict(env.dp.veths), dict(env.dp.namespaces[CID]))
    c = env.container("front", "back")
    ep = env.endpoint(c, BACK, 1)
    env.dp.bridges.discard(BACK.bridge)  # the network's bridge is gone
    with pytest.raises(DatapathError):
        env.rec.attach(CID, "web", ep.id)
    assert (env.dp.veths, env.dp.namespaces[CID]) == before
    assert env.rec.last_error is not None
    # Once the bridge is back, the next pass of the container converges.
    env.dp.bridges.add(BACK.bridge)
    env.rec.sync(only=CID, name="web")
    assert set(env.dp.namespaces[CID]) == {"eth0", "eth1"}


def test_links_are_guarded_through_the_guard_nft(tmp_path: Path) -> None:
    env = Env(tmp_path)
    c = env.container("front")
    ep = env.endpoint(c, NET, 0)
    env.rec.sync(only=CID, name="web")
    assert (guard.FAMILY, guard.TABLE) in env.guard_nft.tables_
    assert ep.host_veth in env.guarded()


class Clock:
    """``time`` for the reconciler's scheduling, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def quiet_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Env, Clock, list[int]]:
    """A reconciler fed by the hub and by the kernel's notifications, with
    one container in place and a full pass just done; the list counts the
    passes that read the namespaces."""
    clock = Clock()
    monkeypatch.setattr(reconcile, "time", clock)
    env = Env(tmp_path)
    # One nftables handle, as the agent has when libnftables is missing:
    # what the guard writes is what the check lists.
    env.rec = ContainerReconciler(
        env.store, env.dp, env.nft, tmp_path / "files", lambda: "nameserver 9.9.9.9\n"
    )
    c = env.container("front")
    env.endpoint(c, NET, 0)
    env.rec.watched = env.rec.kernel_watched = True
    reads: list[int] = []
    observe = env.dp.observe

    def counted(*args: Any) -> Any:
        if not args or args[0] is None:
            reads.append(1)
        return observe(*args)

    env.dp.observe = counted  # type: ignore[method-assign]
    env.rec._pass(False)  # the first pass reads everything
    assert reads == [1]
    return env, clock, reads


def test_an_idle_tick_reads_no_namespace_until_the_kernel_or_store_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, clock, reads = quiet_env(tmp_path, monkeypatch)
    for _ in range(5):
        clock.sleep(15)
        env.rec._pass(False)
    assert reads == [1]  # nothing changed: no namespace read
    # A link goes down inside the container; the kernel says so.
    link = env.dp.namespaces[CID]["eth0"]
    env.dp.namespaces[CID]["eth0"] = InsideLink("eth0", link.mtu, False, link.mac, link.addresses)
    env.rec.kernel_changed()
    clock.sleep(15)
    env.rec._pass(False)
    assert reads == [1, 1]
    assert env.dp.namespaces[CID]["eth0"].up  # repaired on the next tick
    # A store change (another node's write, say) makes the next tick full.
    clock.sleep(15)
    env.rec.on_events([])
    env.rec._pass(False)
    assert reads == [1, 1, 1]
    clock.sleep(15)
    env.rec._pass(False)
    assert reads == [1, 1, 1]


def test_a_kernel_change_under_store_churn_is_read_by_the_next_due_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Store events keep kicking the worker (its tick never comes): the
    first kicked pass an interval after the last full one reads all."""
    env, clock, reads = quiet_env(tmp_path, monkeypatch)
    clock.sleep(1)
    env.rec.kernel_changed()
    env.rec._pass(True)  # less than an interval after the last full pass
    assert reads == [1]
    clock.sleep(14)
    env.rec._pass(True)
    assert reads == [1, 1]


def test_the_safety_net_reads_everything_though_nothing_was_heard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, clock, reads = quiet_env(tmp_path, monkeypatch)
    env.dp.veths.clear()  # gone, and no notification said so
    for _ in range(reconcile.SAFETY_NET_INTERVALS - 1):
        clock.sleep(15)
        env.rec._pass(False)
    assert reads == [1]
    clock.sleep(15)
    env.rec._pass(False)
    assert reads == [1, 1]
    assert env.dp.veths  # made again


def test_without_the_kernels_notifications_every_tick_reads_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, clock, reads = quiet_env(tmp_path, monkeypatch)
    env.rec.kernel_watched = False  # the watch could not start, or died
    clock.sleep(15)
    env.rec._pass(False)
    assert reads == [1, 1]


def test_an_idle_tick_puts_back_a_flushed_guard_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``nft flush ruleset`` sends no rtnetlink notification: the quiet
    tick still checks the tables, without reading any namespace."""
    env, clock, reads = quiet_env(tmp_path, monkeypatch)
    env.nft.tables_.clear()
    clock.sleep(15)
    env.rec._pass(False)
    assert (guard.FAMILY, guard.TABLE) in env.nft.tables_
    assert reads == [1]


def test_a_changed_host_resolver_file_is_copied_on_the_next_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container on no network keeps the host's resolvers: a change of
    them reaches it on the next tick, as before."""
    env, clock, reads = quiet_env(tmp_path, monkeypatch)
    solo = env.container(cid="5" * 64, name="solo")
    env.rec.on_events([])
    clock.sleep(15)
    env.rec._pass(False)
    assert (env.rec.etc_dir(solo.id) / "resolv.conf").read_text() == "nameserver 9.9.9.9\n"
    clock.sleep(15)
    env.rec._pass(False)
    assert reads == [1, 1]
    env.rec._host_resolv = lambda: "nameserver 9.9.9.10\n"
    clock.sleep(15)
    env.rec._pass(False)
    assert (env.rec.etc_dir(solo.id) / "resolv.conf").read_text() == "nameserver 9.9.9.10\n"


def test_a_change_whose_read_failed_is_read_again_not_the_snapshot_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """etcd away while a new container's record arrives: the pass that
    failed to read it leaves it owed, so the next periodic pass reads it
    instead of reusing the snapshot from before it (whose guard table has
    no entry for the container's port: its every frame would be dropped)."""
    env = Env(tmp_path)
    env.rec.watched = True
    env.rec.sync()  # the first full pass: no container yet
    ep = env.endpoint(env.container("front"), NET, 0)
    env.rec.on_events([])  # the hub delivered the new records
    real = reconcile.read_snapshot

    def away(store: Any, node: str | None = None) -> Any:
        raise StoreError("the store is unavailable")

    monkeypatch.setattr(reconcile, "read_snapshot", away)
    with pytest.raises(StoreError):
        env.rec.sync(force=True)
    monkeypatch.setattr(reconcile, "read_snapshot", real)
    env.rec.sync(force=True)  # a periodic pass once the store is back
    assert ep.host_veth in env.guarded()
